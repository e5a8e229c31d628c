//! Reads about workers: liveness after a lost channel, registrations, the
//! jobs their leases point at, views, metrics counts, replay nonces and why
//! a job waits.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::scratch::{self, StoredWorker};
use super::{DbError, SharedDb};
use crate::engine::EngineState;
use crate::engine::machine;
use crate::engine::workers::{WorkerRecord, WorkerView};
use crate::job::Job;

/// How long one count of the queues, leases and workers serves scrapes.
const METRICS_TTL: Duration = Duration::from_secs(2);

/// How long the worker list read to say why a job waits is reused: polls of
/// queued jobs would otherwise read every worker at every poll (the reason
/// is informational; a worker that came or went shows within this time).
const REASON_WORKERS_TTL: Duration = Duration::from_secs(1);

impl SharedDb {
    /// The task channel of `worker_id` (to this instance) closed: it is gone
    /// `grace` from now unless heard from (any instance's sweep drops it).
    pub async fn channel_lost(&self, worker_id: &str, grace: Duration) -> Result<(), DbError> {
        self.touched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(worker_id);
        let client = self.client().await?;
        client
            .execute(
                &client
                    .prepare_cached(
                        "UPDATE workers SET last_seen = LEAST(last_seen, now() + ($2::bigint - ttl_ms) * interval '1 millisecond') WHERE id = $1",
                    )
                    .await?,
                &[&worker_id, &(grace.as_millis() as i64)],
            )
            .await?;
        Ok(())
    }

    /// Whether `worker_id` is registered, and how many workers are.
    pub(super) async fn registered(&self, worker_id: &str) -> Result<(bool, usize), DbError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached(
                        "SELECT EXISTS (SELECT 1 FROM workers WHERE id = $1), count(*) FROM workers",
                    )
                    .await?,
                &[&worker_id],
            )
            .await?;
        Ok((row.get(0), row.get::<_, i64>(1).max(0) as usize))
    }

    /// The jobs a worker's leases point at.
    pub(super) async fn jobs_of(&self, worker_id: &str) -> Result<Vec<Uuid>, DbError> {
        let client = self.client().await?;
        Ok(client
            .query(
                &client
                    .prepare_cached("SELECT DISTINCT job_id FROM task_leases WHERE worker_id = $1")
                    .await?,
                &[&worker_id],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    pub(crate) async fn workers(&self) -> Result<Vec<super::workers::WorkerRecord>, DbError> {
        let client = self.client().await?;
        let now = chrono::Utc::now();
        let mono = Instant::now();
        let mut out = Vec::new();
        for row in client
            .query(
                &client
                    .prepare_cached("SELECT record, last_seen FROM workers ORDER BY id")
                    .await?,
                &[],
            )
            .await?
        {
            if let Ok(stored) = serde_json::from_value::<StoredWorker>(row.get(0)) {
                out.push(stored.record(scratch::instant_of(row.get(1), now, mono)));
            }
        }
        Ok(out)
    }

    /// The queues, leases and workers for a scrape, counted at most once
    /// per [`METRICS_TTL`] however many scrape (concurrent scrapes wait for
    /// one count).
    pub(crate) async fn metrics_snapshot(&self) -> Result<crate::metrics::Snapshot, DbError> {
        let mut cached = self.metrics_cache.lock().await;
        if let Some((at, snapshot)) = cached.as_ref()
            && at.elapsed() < METRICS_TTL
        {
            return Ok(snapshot.clone());
        }
        let snapshot = self.count_for_metrics().await?;
        *cached = Some((Instant::now(), snapshot.clone()));
        Ok(snapshot)
    }

    async fn count_for_metrics(&self) -> Result<crate::metrics::Snapshot, DbError> {
        let client = self.client().await?;
        let queues = client
            .query(
                "SELECT task_type, count(*) FROM task_queue GROUP BY task_type",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as usize, None))
            .collect();
        let count = |sql: &'static str| async {
            client
                .query_one(sql, &[])
                .await
                .map(|r| r.get::<_, i64>(0) as usize)
        };
        Ok(crate::metrics::Snapshot {
            queues,
            in_flight: count("SELECT count(*) FROM task_leases").await?,
            workers: count("SELECT count(*) FROM workers").await?,
        })
    }

    pub(crate) async fn worker_views(&self) -> Result<Vec<WorkerView>, DbError> {
        Ok(self.workers().await?.iter().map(|w| w.view()).collect())
    }

    /// Records a message nonce; false when it was seen already.
    pub(crate) async fn remember_nonce(&self, key: &str) -> Result<bool, DbError> {
        let client = self.client().await?;
        let n = client
            .execute(
                &client
                    .prepare_cached(
                        "INSERT INTO seen_nonces (key) VALUES ($1) ON CONFLICT DO NOTHING",
                    )
                    .await?,
                &[&key],
            )
            .await?;
        Ok(n == 1)
    }

    /// Why a waiting job waits (no worker offers its task type).
    /// The workers are read at most once per [`REASON_WORKERS_TTL`].
    pub(crate) async fn waiting_reason(&self, job: &Job) -> Result<Option<String>, DbError> {
        let cached = {
            let cache = self
                .reason_workers
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            cache
                .as_ref()
                .filter(|(at, _)| at.elapsed() < REASON_WORKERS_TTL)
                .map(|(_, st)| st.clone())
        };
        let st = match cached {
            Some(st) => st,
            None => {
                let mut st = EngineState::default();
                for w in self.workers().await? {
                    st.workers.insert(w.worker_id.clone(), w);
                }
                let st = Arc::new(st);
                *self
                    .reason_workers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), st.clone()));
                st
            }
        };
        Ok(machine::waiting_reason(&st, job))
    }
}
