//! A worker taking a task: a claim in the next batch ([`super::batch`]),
//! where the machine hands it out; and when its `last_seen` is written.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{DbError, SharedDb, TOUCHED_KEPT};
use crate::engine::strategy::Standing;
use crate::engine::{EngineError, EngineState, Shared, machine};

/// A worker's `last_seen` is written at most this often by one instance
/// (at every task taken and every result it was a row update, i.e. a new
/// row version and WAL, twice per job); worker time-outs are many seconds.
const TOUCH_EVERY: Duration = Duration::from_millis(500);

/// Most claims one take makes in a row that each find a task that is no
/// longer waiting (its job moved on, or another take of the same batch got
/// it first) before it answers "nothing" (the worker polls again).
const STALE_CLAIMS: usize = 64;

/// What one attempt at taking a task found.
enum Took {
    /// A task for the worker.
    Task(Box<rxon::TaskPayload>),
    /// A task was claimed for the worker but was no longer waiting, or went
    /// to another take of the batch: try again.
    Stale,
    /// Nothing queued that the worker can run (tasks held back by their
    /// rate keys may go at the instant given).
    Nothing(Option<Instant>, Option<Box<Standing>>),
    /// The worker is not registered (or was dropped meanwhile).
    UnknownWorker,
}

impl SharedDb {
    /// Claims the first queued task this worker can run, if any; else
    /// when tasks held back by their rate keys may go.
    pub(crate) async fn take(
        &self,
        shared: &Arc<Shared>,
        worker_id: &str,
    ) -> Result<(Option<rxon::TaskPayload>, Option<Instant>, Option<Standing>), EngineError> {
        self.touch(worker_id).await?;
        for _ in 0..STALE_CLAIMS {
            let (on, worker) = (shared.clone(), worker_id.to_string());
            let took = self
                .batched_take(shared, worker_id, move |st, claimed_for| {
                    take_step(&on, st, &worker, claimed_for)
                })
                .await?;
            match took {
                Took::Task(payload) => return Ok((Some(*payload), None, None)),
                Took::Stale => continue,
                Took::Nothing(again_at, standing) => {
                    return Ok((None, again_at, standing.map(|s| *s)));
                }
                Took::UnknownWorker => {
                    return Err(EngineError::UnknownWorker(worker_id.to_string()));
                }
            }
        }
        Ok((None, None, None))
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

/// A take's step of a batch: the machine hands `worker` the first task of
/// its skills in the scratch queue (those the batch claimed, and any an
/// earlier event of the batch queued).
fn take_step(shared: &Shared, st: &mut EngineState, worker: &str, claimed_for: &[String]) -> Took {
    match st.workers.get(worker) {
        None => return Took::UnknownWorker,
        Some(w) if w.status == "offline" => return Took::Nothing(None, None),
        Some(_) => {}
    }
    match machine::take_task(shared, st, worker) {
        Some(payload) => Took::Task(Box::new(payload)),
        None if claimed_for.iter().any(|w| w == worker) => Took::Stale,
        None => Took::Nothing(st.again_at, st.standing.take().map(Box::new)),
    }
}
