//! Group commit: the frequent events (creates and task results) that arrive
//! while others are being written share the next transaction. One batch is
//! one `engine_load` of every job and worker its events name, each event's
//! step of the state machine over that one scratch state, in arrival order,
//! one write and one commit — the statements a lone event costs, shared by
//! all of them.
//!
//! [`BATCHERS`] batches are written at once; an event waits only while all
//! of them are busy, and then goes into the next batch with every other
//! event that arrived meanwhile (at most [`MAX_BATCH`]). An idle instance
//! writes each event as soon as it arrives, alone.
//!
//! A batch that fails (a job changed through another instance meanwhile, a
//! deadlock, a job that cannot be read, the database gone) commits nothing:
//! each of its events is then made alone, under the one retry policy
//! ([`SharedDb::event`]), so one event's trouble costs the others a second
//! attempt and nothing else.

use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use super::{DbError, SharedDb};
use crate::engine::{EngineState, Shared};

/// Batches written at once by one instance.
const BATCHERS: usize = 4;
/// Most events in one batch.
const MAX_BATCH: usize = 64;

/// An event waiting for its batch.
pub(super) struct Pending {
    jobs: Vec<Uuid>,
    workers: Vec<String>,
    /// A take: a task is claimed for the first of `workers`.
    claim: bool,
    step: Box<dyn Step>,
}

/// An event's step of the state machine, and where its answer goes.
trait Step: Send {
    /// Runs the step over the batch's scratch state (again after a failed
    /// attempt: what an earlier run changed was thrown away with it).
    /// `claimed_for` names, once per task the batch claimed, the worker it
    /// was claimed for.
    fn run(&mut self, st: &mut EngineState, claimed_for: &[String]);
    /// The batch committed: the last run's answer goes to the caller.
    fn committed(self: Box<Self>);
    /// The batch did not commit: the step goes back to the caller, who
    /// makes it alone.
    fn alone(self: Box<Self>);
}

/// What a batch tells the caller of [`SharedDb::batched`].
enum Outcome<F, R> {
    Done(R),
    Alone(F),
}

struct StepOf<F, R> {
    f: Option<F>,
    out: Option<R>,
    reply: oneshot::Sender<Outcome<F, R>>,
}

impl<F, R> Step for StepOf<F, R>
where
    F: FnMut(&mut EngineState, &[String]) -> R + Send + 'static,
    R: Send + 'static,
{
    fn run(&mut self, st: &mut EngineState, claimed_for: &[String]) {
        if let Some(f) = self.f.as_mut() {
            self.out = Some(f(st, claimed_for));
        }
    }

    fn committed(self: Box<Self>) {
        let Self { f, out, reply } = *self;
        // A step that never ran (it cannot be: every step of a batch runs
        // before its write) is made alone rather than answered with nothing.
        let outcome = match (out, f) {
            (Some(r), _) => Outcome::Done(r),
            (None, Some(f)) => Outcome::Alone(f),
            (None, None) => return,
        };
        // The caller may have gone (its client hung up): the event stands.
        let _ = reply.send(outcome);
    }

    fn alone(self: Box<Self>) {
        if let Some(f) = self.f {
            let _ = self.reply.send(Outcome::Alone(f));
        }
    }
}

/// The receiving end the batchers share.
pub(super) type Queue = Arc<Mutex<mpsc::UnboundedReceiver<Pending>>>;

impl SharedDb {
    /// Runs one event in the next batch (see the module's text): `f` over
    /// the scratch state of `jobs` and `workers`, its answer once the batch
    /// has committed.
    pub(super) async fn batched<R: Send + 'static>(
        &self,
        shared: &Arc<Shared>,
        jobs: Vec<Uuid>,
        workers: Vec<String>,
        mut f: impl FnMut(&mut EngineState) -> R + Send + 'static,
    ) -> Result<R, DbError> {
        self.in_batch(shared, jobs, workers, false, move |st, _| f(st))
            .await
    }

    /// A take in the next batch: a task claimed for `worker` if one of its
    /// skills is queued, then `f`, told whom the batch's tasks were claimed
    /// for.
    pub(super) async fn batched_take<R: Send + 'static>(
        &self,
        shared: &Arc<Shared>,
        worker: &str,
        f: impl FnMut(&mut EngineState, &[String]) -> R + Send + 'static,
    ) -> Result<R, DbError> {
        self.in_batch(shared, Vec::new(), vec![worker.to_string()], true, f)
            .await
    }

    async fn in_batch<F, R>(
        &self,
        shared: &Arc<Shared>,
        jobs: Vec<Uuid>,
        workers: Vec<String>,
        claim: bool,
        f: F,
    ) -> Result<R, DbError>
    where
        F: FnMut(&mut EngineState, &[String]) -> R + Send + 'static,
        R: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            jobs: jobs.clone(),
            workers: workers.clone(),
            claim,
            step: Box::new(StepOf {
                f: Some(f),
                out: None,
                reply,
            }),
        };
        let f = match self.batch.send(pending) {
            Ok(()) => match answer.await {
                Ok(Outcome::Done(r)) => return Ok(r),
                Ok(Outcome::Alone(f)) => f,
                // The batchers stopped with the engine.
                Err(_) => return Err(DbError::Pool("the engine is stopping".into())),
            },
            Err(mpsc::error::SendError(pending)) => {
                // No batchers (stopping): made alone, below.
                pending.step.alone();
                match answer.await {
                    Ok(Outcome::Alone(f)) => f,
                    _ => return Err(DbError::Pool("the engine is stopping".into())),
                }
            }
        };
        let claim_for = if claim {
            &workers[..workers.len().min(1)]
        } else {
            &[]
        };
        self.event_claiming(shared, &jobs, &workers, claim_for, f)
            .await
    }

    /// One batcher: takes what is waiting (at least one event), writes it,
    /// and again, until the engine stops.
    pub(super) async fn batcher(self: Arc<Self>, shared: Arc<Shared>, queue: Queue) {
        loop {
            let batch = {
                let mut rx = queue.lock().await;
                let first = tokio::select! {
                    first = rx.recv() => first,
                    _ = shared.stopping.cancelled() => None,
                };
                let Some(first) = first else { return };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                batch
            };
            self.write_batch(&shared, batch).await;
        }
    }

    async fn write_batch(&self, shared: &Arc<Shared>, mut batch: Vec<Pending>) {
        // Sorted and deduplicated by the load.
        let jobs: Vec<Uuid> = batch.iter().flat_map(|p| p.jobs.iter().copied()).collect();
        let mut workers: Vec<String> = batch
            .iter()
            .flat_map(|p| p.workers.iter().cloned())
            .collect();
        workers.sort();
        workers.dedup();
        let claim_for: Vec<String> = batch
            .iter()
            .filter(|p| p.claim)
            .filter_map(|p| p.workers.first().cloned())
            .collect();
        let began = std::time::Instant::now();
        let written = self
            .try_event(
                shared,
                &jobs,
                &workers,
                &claim_for,
                &mut |st, claimed_for| {
                    for p in batch.iter_mut() {
                        p.step.run(st, claimed_for);
                    }
                },
            )
            .await;
        match written {
            Ok(()) => {
                crate::metrics::storage_batch(batch.len(), began.elapsed());
                for p in batch {
                    p.step.committed();
                }
            }
            Err(e) => {
                tracing::debug!(
                    "a batch of {} event(s) did not commit ({e}); each is made alone",
                    batch.len()
                );
                for p in batch {
                    p.step.alone();
                }
            }
        }
    }

    /// Starts the batchers (with the engine).
    pub(super) fn start_batchers(self: &Arc<Self>, shared: &Arc<Shared>) {
        let Some(queue) = self
            .batch_queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let queue: Queue = Arc::new(Mutex::new(queue));
        for _ in 0..BATCHERS {
            tokio::spawn(self.clone().batcher(shared.clone(), queue.clone()));
        }
    }
}
