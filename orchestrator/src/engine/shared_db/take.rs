//! A worker taking a task: its record and whether anything is queued for
//! it, then the claim and the event in one transaction; and when its
//! `last_seen` is written.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::scratch::{Scratch, StoredWorker};
use super::{DbError, SharedDb, TOUCHED_KEPT};
use crate::engine::{EngineError, Shared, machine};

/// A worker's `last_seen` is written at most this often by one instance
/// (at every task taken and every result it was a row update, i.e. a new
/// row version and WAL, twice per job); worker time-outs are many seconds.
const TOUCH_EVERY: Duration = Duration::from_millis(500);

/// Whether a task of one of worker `w`'s skills is queued (SQL).
macro_rules! queued_for_worker {
    () => {
        "EXISTS (SELECT 1 FROM task_queue q WHERE q.task_type IN
             (SELECT s->>'name' FROM jsonb_array_elements(w.record->'skills') s))"
    };
}

/// What one attempt at taking a task found.
enum Took {
    /// A task for the worker.
    Task(Box<rxon::TaskPayload>),
    /// A stale queue entry (its job moved on), consumed: try the next one.
    Stale,
    /// Nothing queued that the worker can run.
    Nothing,
    /// The worker is not registered (or was dropped meanwhile).
    UnknownWorker,
}

impl SharedDb {
    /// Claims the oldest queued task this worker can run, if any.
    pub(crate) async fn take(
        &self,
        shared: &Arc<Shared>,
        worker_id: &str,
    ) -> Result<Option<rxon::TaskPayload>, EngineError> {
        let mut made = 0;
        loop {
            made += 1;
            let took = match self.try_take(shared, worker_id).await {
                Ok(took) => took,
                Err(e) => {
                    self.again(made, e).await?;
                    continue;
                }
            };
            match took {
                Took::Task(payload) => return Ok(Some(*payload)),
                Took::Stale => made = 0,
                Took::Nothing => return Ok(None),
                Took::UnknownWorker => {
                    return Err(EngineError::UnknownWorker(worker_id.to_string()));
                }
            }
        }
    }

    async fn try_take(&self, shared: &Arc<Shared>, worker_id: &str) -> Result<Took, DbError> {
        let mut client = self.client().await?;
        // The worker's record, and whether a task it can run is queued at
        // all: woken pollers that find the queue empty stop at this one
        // statement instead of a transaction.
        let sql = if self.due_for_touch(worker_id) {
            concat!(
                "UPDATE workers w SET last_seen = now() WHERE id = $1 RETURNING record, ",
                queued_for_worker!()
            )
        } else {
            concat!(
                "SELECT record, ",
                queued_for_worker!(),
                " FROM workers w WHERE id = $1"
            )
        };
        let row = client
            .query_opt(&client.prepare_cached(sql).await?, &[&worker_id])
            .await?;
        let Some(row) = row else {
            return Ok(Took::UnknownWorker);
        };
        let stored: StoredWorker =
            serde_json::from_value(row.get(0)).map_err(|e| DbError::Corrupt(e.to_string()))?;
        if stored.status == "offline" || !row.get::<_, bool>(1) {
            return Ok(Took::Nothing);
        }
        let skills: Vec<String> = stored.skills.iter().map(|s| s.name.clone()).collect();
        let tx = client.transaction().await?;
        let Some(mut scratch) = Scratch::claim(
            &tx,
            worker_id,
            &skills,
            shared.settings.finished_jobs_in_memory,
            self.now(),
        )
        .await?
        else {
            tx.commit().await?;
            return Ok(Took::Nothing);
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
            tx.rollback().await?;
            return Ok(Took::UnknownWorker);
        }
        let payload = machine::take_task(shared, &mut scratch.st, worker_id);
        // A stale entry is consumed, not put back.
        scratch.st.queues.clear();
        let applied = scratch.apply(&tx, shared).await?;
        tx.commit().await?;
        drop(client);
        self.committed(shared, applied);
        Ok(match payload {
            Some(payload) => Took::Task(Box::new(payload)),
            None => Took::Stale,
        })
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
