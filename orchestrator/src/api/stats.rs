//! `GET /api/<v>/stats/stream`: Server-Sent Events, one `stats` event per
//! second about the caller's jobs: how many ended in that second (by status)
//! and how long they took from creation to end (p50, p95, max). The
//! dashboard's live charts draw it. It counts the changes made through this
//! instance (as [`super::stream`] does) and shares its limit on open streams.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;

use super::AppState;
use super::error::ApiError;
use super::session::Caller;
use crate::engine::JobUpdate;
use crate::job::JobStatus;

/// How often a `stats` event is sent.
const PERIOD: Duration = Duration::from_secs(1);
/// Most latencies kept per period for the percentiles (beyond it, a
/// uniform sample of them; counts stay exact).
const MAX_SAMPLES: usize = 10_000;

/// One period's figures, as sent.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Period {
    /// End of the period, ms since the Unix epoch.
    pub at_ms: i64,
    pub finished: u64,
    pub failed: u64,
    pub cancelled: u64,
    /// Created → ended, in ms, of the jobs that ended in the period.
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    /// Changes this stream missed because it fell behind (then the counts
    /// are low).
    pub missed: u64,
}

/// Collects one period.
#[derive(Debug, Default)]
struct Window {
    period: Period,
    latencies: Vec<f64>,
    seen: u64,
}

impl Window {
    fn add(&mut self, update: &JobUpdate) {
        match update.status {
            JobStatus::Finished => self.period.finished += 1,
            JobStatus::Failed | JobStatus::Quarantined => self.period.failed += 1,
            JobStatus::Cancelled => self.period.cancelled += 1,
            _ => return,
        }
        let end = update.finished_at.unwrap_or(update.updated_at);
        let ms = (end - update.created_at).num_microseconds().unwrap_or(0) as f64 / 1e3;
        self.seen += 1;
        if self.latencies.len() < MAX_SAMPLES {
            self.latencies.push(ms);
        } else {
            // Reservoir sampling keeps a uniform sample of the period.
            let slot = (rand_index(self.seen)) as usize;
            if slot < MAX_SAMPLES {
                self.latencies[slot] = ms;
            }
        }
    }

    /// The period's figures; the window starts over.
    fn close(&mut self, at_ms: i64) -> Period {
        let mut done = std::mem::take(self);
        done.period.at_ms = at_ms;
        let l = &mut done.latencies;
        if !l.is_empty() {
            l.sort_by(f64::total_cmp);
            let pick = |q: f64| l[((l.len() - 1) as f64 * q).round() as usize];
            done.period.latency_p50_ms = Some(pick(0.5));
            done.period.latency_p95_ms = Some(pick(0.95));
            done.period.latency_max_ms = l.last().copied();
        }
        done.period
    }
}

/// A cheap index in `0..n` for reservoir sampling (no cryptographic need).
fn rand_index(n: u64) -> u64 {
    let x = uuid::Uuid::new_v4().as_u128() as u64;
    x % n.max(1)
}

#[utoipa::path(get, path = "/api/v1/stats/stream", tag = "jobs",
    summary = "Server-Sent Events: each second, your jobs ended by status and their latency (`event: stats`)",
    responses((status = 200, description = "An event stream of `{at_ms, finished, failed, cancelled, latency_p50_ms, latency_p95_ms, latency_max_ms, missed}`", content_type = "text/event-stream", body = String),
              (status = 503, description = "Too many streams open", body = super::openapi::ErrorBody), (status = 401, description = "No client token", body = super::openapi::ErrorBody), (status = 403, description = "Unknown token", body = super::openapi::ErrorBody)))]
pub async fn job_stats(
    State(state): State<AppState>,
    Caller(owner): Caller,
) -> Result<Response, ApiError> {
    let permit = super::stream::stream_permit(&state, &owner)?;
    let updates = state.engine.subscribe_updates();
    let stopping = state.engine.stopping();
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    let start = (updates, tick, Window::default(), permit);
    let stream =
        futures_util::stream::unfold(start, move |(mut updates, mut tick, mut w, permit)| {
            let (owner, stopping) = (owner.clone(), stopping.clone());
            async move {
                loop {
                    tokio::select! {
                        _ = stopping.cancelled() => return None,
                        _ = tick.tick() => {
                            let period = w.close(chrono::Utc::now().timestamp_millis());
                            let event = Event::default().event("stats").json_data(&period).ok()?;
                            return Some((Ok::<_, Infallible>(event), (updates, tick, w, permit)));
                        }
                        next = updates.recv() => match next {
                            Ok(u) if u.owner == owner => w.add(&u),
                            Ok(_) => {}
                            Err(RecvError::Lagged(n)) => w.period.missed += n,
                            Err(RecvError::Closed) => return None,
                        },
                    }
                }
            }
        });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(status: JobStatus, ms: i64) -> JobUpdate {
        let created = chrono::Utc::now();
        let end = created + chrono::Duration::milliseconds(ms);
        JobUpdate {
            job_id: uuid::Uuid::new_v4(),
            owner: "c".into(),
            blueprint: "b".into(),
            status,
            current_state: "s".into(),
            created_at: created,
            updated_at: end,
            finished_at: Some(end),
            progress: None,
            event: None,
        }
    }

    #[test]
    fn a_period_counts_ended_jobs_and_their_latency_then_starts_over() {
        let mut w = Window::default();
        for ms in 1..=100 {
            w.add(&ended(JobStatus::Finished, ms));
        }
        w.add(&ended(JobStatus::Failed, 500));
        w.add(&ended(JobStatus::Cancelled, 7));
        w.add(&ended(JobStatus::Running, 9)); // not an end: not counted
        let p = w.close(42);
        assert_eq!(
            (p.at_ms, p.finished, p.failed, p.cancelled),
            (42, 100, 1, 1)
        );
        assert_eq!(p.latency_max_ms, Some(500.0));
        let p50 = p.latency_p50_ms.unwrap();
        assert!((49.0..=53.0).contains(&p50), "p50 {p50}");
        let p95 = p.latency_p95_ms.unwrap();
        assert!((94.0..=98.0).contains(&p95), "p95 {p95}");
        let empty = w.close(43);
        assert_eq!(
            empty,
            Period {
                at_ms: 43,
                ..Period::default()
            }
        );
    }
}
