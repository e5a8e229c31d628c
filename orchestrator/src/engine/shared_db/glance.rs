//! One look at the shared database per tick, for everything an instance
//! watches: when the next timer is due, whether a worker has expired, and
//! marks that change when a task is queued, a job ends or a deploy lands.
//! An idle instance costs the database one statement per [`GLANCE_EVERY`],
//! however many long-polls and `?wait=` requests it holds: those wait on
//! `NOTIFY` only, and the marks wake them here if a notification was missed
//! (the `LISTEN` connection was down).

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{DbError, SharedDb};

/// Longest time between two looks.
pub const GLANCE_EVERY: Duration = Duration::from_millis(500);

/// What one look saw.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Glance {
    /// Seconds until the next timer is due (≤ 0: due now); `None`: no timer.
    pub next_timer_in: Option<f64>,
    /// Whether some worker has not been heard from within its liveness.
    pub worker_expired: bool,
    /// Changes whenever a task is queued.
    pub queued_mark: i64,
    /// Changes whenever a job finishes, fails or is cancelled.
    pub ended_mark: Option<DateTime<Utc>>,
    /// Changes whenever a plugin or blueprint is deployed, or a plugin's
    /// offered version changes.
    pub deploys_mark: String,
}

impl SharedDb {
    pub(crate) async fn glance(&self) -> Result<Glance, DbError> {
        let client = self.client().await?;
        let sent = Utc::now();
        let row = client
            .query_one(
                &client
                    .prepare_cached(
                        "SELECT
                           (SELECT extract(epoch FROM min(due_at) - now())::float8 FROM timers),
                           EXISTS (SELECT 1 FROM workers
                                   WHERE last_seen < now() - ttl_ms * interval '1 millisecond'),
                           (SELECT last_value FROM task_queue_seq_seq),
                           (SELECT max(updated_at) FROM jobs
                            WHERE status IN ('finished', 'failed', 'cancelled')),
                           (SELECT count(*) FROM plugin_versions)::text || '/'
                             || (SELECT count(*) FROM blueprint_versions)::text || '/'
                             || (SELECT coalesce(md5(string_agg(name || '=' || coalesce(version::text, '-'), ',' ORDER BY name)), '')
                                 FROM plugin_current),
                           now()",
                    )
                    .await?,
                &[],
            )
            .await?;
        self.measure_clock(sent, row.get(5));
        Ok(Glance {
            next_timer_in: row.get(0),
            worker_expired: row.get(1),
            queued_mark: row.get(2),
            ended_mark: row.get(3),
            deploys_mark: row.get(4),
        })
    }
}

/// A clock difference worth a warning: deadlines are right either way (they
/// use the database's clock), but logs and job timestamps use this one.
const SKEW_WARNING_US: i64 = 1_000_000;

impl SharedDb {
    /// Records how far the database's clock is from this instance's: its
    /// `now()` against the middle of the round trip that read it.
    fn measure_clock(&self, sent: DateTime<Utc>, database: DateTime<Utc>) {
        let received = Utc::now();
        let middle = sent + (received - sent) / 2;
        let offset = (database - middle).num_microseconds().unwrap_or_default();
        let before = self
            .clock_offset_us
            .swap(offset, std::sync::atomic::Ordering::Relaxed);
        if offset.abs() >= SKEW_WARNING_US && (before - offset).abs() >= SKEW_WARNING_US {
            tracing::warn!(
                "this instance's clock is {:.1} s off the database's; timers and worker liveness use the database's",
                -offset as f64 / 1e6
            );
        }
    }
}
