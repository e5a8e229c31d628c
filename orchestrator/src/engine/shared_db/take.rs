//! A worker taking a task: its record and whether anything is queued for
//! it, then the claim and the event in one transaction; and when its
//! `last_seen` is written.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::scratch::{Scratch, StoredWorker};
use super::{ATTEMPTS, DbError, SharedDb, TOUCHED_KEPT};
use crate::engine::{EngineError, Shared, machine};

/// A worker's `last_seen` is written at most this often by one instance
/// (at every task taken and every result it was a row update, i.e. a new
/// row version and WAL, twice per job); worker time-outs are many seconds.
const TOUCH_EVERY: Duration = Duration::from_millis(500);

enum TakeError {
    Db(DbError),
    Engine(EngineError),
}

impl From<DbError> for TakeError {
    fn from(e: DbError) -> Self {
        Self::Db(e)
    }
}

impl From<tokio_postgres::Error> for TakeError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(e.into())
    }
}

impl SharedDb {
    /// Claims the oldest queued task this worker can run, if any.
    pub(crate) async fn take(
        &self,
        shared: &Arc<Shared>,
        worker_id: &str,
    ) -> Result<Option<rxon::TaskPayload>, EngineError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_take(shared, worker_id).await {
                Err(TakeError::Db(DbError::UnreadableJob(id, why))) if attempt < ATTEMPTS => {
                    self.set_aside(id, &why).await?;
                }
                Err(TakeError::Db(e)) if e.is_retryable() && attempt < ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(2 * attempt as u64)).await;
                }
                Err(TakeError::Db(e)) => return Err(e.into()),
                Err(TakeError::Engine(e)) => return Err(e),
                Ok(Some(Some(payload))) => return Ok(Some(payload)),
                // A stale entry (the job moved on): take the next one.
                Ok(Some(None)) => continue,
                Ok(None) => return Ok(None),
            }
        }
    }

    async fn try_take(
        &self,
        shared: &Arc<Shared>,
        worker_id: &str,
    ) -> Result<Option<Option<rxon::TaskPayload>>, TakeError> {
        let mut client = self.client().await?;
        // The worker's record, and whether a task it can run is queued at
        // all: woken pollers that find the queue empty stop at this one
        // statement instead of a transaction.
        let sql = if self.due_for_touch(worker_id) {
            "UPDATE workers w SET last_seen = now() WHERE id = $1
             RETURNING record, EXISTS (SELECT 1 FROM task_queue q WHERE q.task_type IN
                 (SELECT s->>'name' FROM jsonb_array_elements(w.record->'skills') s))"
        } else {
            "SELECT record, EXISTS (SELECT 1 FROM task_queue q WHERE q.task_type IN
                 (SELECT s->>'name' FROM jsonb_array_elements(w.record->'skills') s))
             FROM workers w WHERE id = $1"
        };
        let row = client
            .query_opt(&client.prepare_cached(sql).await?, &[&worker_id])
            .await
            .map_err(DbError::from)?;
        let Some(row) = row else {
            return Err(TakeError::Engine(EngineError::UnknownWorker(
                worker_id.to_string(),
            )));
        };
        let stored: StoredWorker =
            serde_json::from_value(row.get(0)).map_err(|e| DbError::Corrupt(e.to_string()))?;
        if stored.status == "offline" || !row.get::<_, bool>(1) {
            return Ok(None);
        }
        let skills: Vec<String> = stored.skills.iter().map(|s| s.name.clone()).collect();
        let tx = client.transaction().await.map_err(DbError::from)?;
        let Some(mut scratch) = Scratch::claim(
            &tx,
            worker_id,
            &skills,
            shared.settings.finished_jobs_in_memory,
            self.now(),
        )
        .await?
        else {
            tx.commit().await.map_err(DbError::from)?;
            return Ok(None);
        };
        // The worker expired or left since it was read above (another
        // instance dropped it): undo the claim, so the task stays queued for
        // another worker instead of being consumed without an owner.
        let usable = scratch
            .st
            .workers
            .get(worker_id)
            .is_some_and(|w| w.status != "offline");
        if !usable {
            tx.rollback().await.map_err(DbError::from)?;
            return Err(TakeError::Engine(EngineError::UnknownWorker(
                worker_id.to_string(),
            )));
        }
        let payload = machine::take_task(shared, &mut scratch.st, worker_id);
        // A stale entry is consumed, not put back.
        scratch.st.queues.clear();
        let applied = scratch.apply(&tx, shared).await?;
        tx.commit().await.map_err(DbError::from)?;
        drop(client);
        self.committed(shared, applied);
        Ok(Some(payload))
    }

    /// Whether `worker_id`'s `last_seen` is due to be written (at most once
    /// per [`TOUCH_EVERY`]); counts it as written.
    fn due_for_touch(&self, worker_id: &str) -> bool {
        let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if touched
            .get(worker_id)
            .is_some_and(|at| now.duration_since(*at) < TOUCH_EVERY)
        {
            return false;
        }
        if touched.len() >= TOUCHED_KEPT {
            touched.retain(|_, at| now.duration_since(*at) < TOUCH_EVERY);
        }
        touched.insert(worker_id.to_string(), now);
        true
    }

    /// The worker was heard from (outside any event's transaction).
    pub(super) async fn touch(&self, worker_id: &str) -> Result<(), DbError> {
        if !self.due_for_touch(worker_id) {
            return Ok(());
        }
        let client = self.client().await?;
        client
            .execute(
                &client
                    .prepare_cached("UPDATE workers SET last_seen = now() WHERE id = $1")
                    .await?,
                &[&worker_id],
            )
            .await?;
        Ok(())
    }
}
