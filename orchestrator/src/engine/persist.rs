//! The writer: applies job writes to storage in the order the engine made
//! them, batching whatever queued up meanwhile into one transaction.
//!
//! A transaction that fails (the database busy past its timeout, the disk
//! full, an I/O error) is tried again, whole, after a growing pause
//! ([`RETRY_FIRST`] doubling up to [`RETRY_MAX`]), until it succeeds: a
//! change the engine made is never dropped or half-written, and whoever
//! waits for it (a create answers once its job is saved) waits until then.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::storage::{JobWrite, Storage};

/// One write (or, with `None`, a barrier), with an optional
/// acknowledgement once it and everything before it is durable.
pub struct PersistMsg {
    pub write: Option<JobWrite>,
    /// A job whose webhook is done with (delivered or given up).
    pub webhook_done: Option<uuid::Uuid>,
    pub ack: Option<oneshot::Sender<Result<(), String>>>,
}

/// Most writes put in one transaction.
const MAX_BATCH: usize = 512;

/// First pause before a failed transaction is tried again.
pub const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(100);
/// Longest pause between two tries of a failed transaction.
pub const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Most rounds of letting ready tasks run before a transaction, to gather
/// the writes they make into it.
const GATHER_ROUNDS: usize = 4;

type Ack = oneshot::Sender<Result<(), String>>;

/// One transaction's worth of messages, split by kind. Its vectors are
/// reused from batch to batch (no allocation per batch once warm).
#[derive(Default)]
struct Batch {
    writes: Vec<JobWrite>,
    delivered: Vec<Uuid>,
    acks: Vec<Ack>,
    /// Job id → index in `writes` (merging several writes of one job).
    index: HashMap<Uuid, usize>,
}

impl Batch {
    /// Adds a message. Several writes of one job in a batch become one:
    /// the latest version of the job with every event of each, in order
    /// (the job row is stored once per batch, the history loses nothing).
    fn add(&mut self, msg: PersistMsg) {
        if let Some(write) = msg.write {
            match self.index.get(&write.job.id) {
                Some(&at) => merge(&mut self.writes[at], write),
                None => {
                    self.index.insert(write.job.id, self.writes.len());
                    self.writes.push(write);
                }
            }
        }
        self.delivered.extend(msg.webhook_done);
        self.acks.extend(msg.ack);
    }

    fn clear(&mut self) {
        self.writes.clear();
        self.delivered.clear();
        self.acks.clear();
        self.index.clear();
    }
}

/// `later` folded into `earlier` (same job, made after it).
fn merge(earlier: &mut JobWrite, later: JobWrite) {
    let JobWrite {
        job,
        events,
        webhook,
    } = later;
    if job.version >= earlier.job.version {
        earlier.job = job;
    }
    earlier.events.extend(events);
    if webhook.is_some() {
        earlier.webhook = webhook;
    }
}

/// Adds to `incoming` the writes that the tasks already woken (requests,
/// results) make once they run: they join this transaction instead of the
/// next (fewer commits per job under load). Again while that brings more, a
/// few rounds at most; each round lets every ready task run once, and none
/// waits on a timer, so an idle orchestrator commits at once.
async fn gather(rx: &mut mpsc::UnboundedReceiver<PersistMsg>, incoming: &mut Vec<PersistMsg>) {
    for _ in 0..GATHER_ROUNDS {
        tokio::task::yield_now().await;
        let before = incoming.len();
        while incoming.len() < MAX_BATCH
            && let Ok(msg) = rx.try_recv()
        {
            incoming.push(msg);
        }
        if incoming.len() == before || incoming.len() >= MAX_BATCH {
            break;
        }
    }
}

pub fn spawn_writer(
    storage: Arc<dyn Storage>,
) -> (
    mpsc::UnboundedSender<PersistMsg>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<PersistMsg>();
    let handle = tokio::spawn(async move {
        let mut incoming = Vec::with_capacity(MAX_BATCH);
        let mut batch = Batch::default();
        while rx.recv_many(&mut incoming, MAX_BATCH).await > 0 {
            gather(&mut rx, &mut incoming).await;
            for msg in incoming.drain(..) {
                batch.add(msg);
            }
            let storage = storage.clone();
            // The acknowledgements go from the blocking thread as soon as
            // the transaction ends: the waiting requests are woken one pass
            // of the runtime's queue earlier than through this task.
            let result = tokio::task::spawn_blocking(move || {
                write_until_saved(storage.as_ref(), &batch);
                for ack in batch.acks.drain(..) {
                    let _ = ack.send(Ok(()));
                }
                batch
            })
            .await;
            match result {
                Ok(mut done) => {
                    done.clear();
                    batch = done;
                }
                Err(e) => {
                    tracing::error!("the storage writer crashed: {e}");
                    batch = Batch::default();
                }
            }
        }
    });
    (tx, handle)
}

/// Writes `batch` in one transaction, trying again after a failure until
/// it is saved (on a blocking thread: the pauses block only it).
fn write_until_saved(storage: &dyn Storage, batch: &Batch) {
    let mut pause = RETRY_FIRST;
    let mut failures = 0u32;
    loop {
        let started = std::time::Instant::now();
        let outcome = storage.write(&batch.writes, &batch.delivered);
        crate::metrics::storage_batch(batch.writes.len(), started.elapsed());
        match outcome {
            Ok(()) => {
                if failures > 0 {
                    tracing::warn!(
                        "saved {} job change(s) after {failures} failed tries",
                        batch.writes.len()
                    );
                }
                return;
            }
            Err(e) => {
                failures += 1;
                tracing::error!(
                    "could not save {} job change(s) (try {failures}): {e}; trying the whole transaction again in {pause:?} (nothing is dropped; requests waiting for it wait on)",
                    batch.writes.len()
                );
                std::thread::sleep(pause);
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Job;
    use crate::job::JobEvent;

    fn job() -> Job {
        serde_json::from_value(serde_json::json!({
            "id": Uuid::new_v4(), "blueprint": "b", "owner": "o", "status": "running",
            "current_state": "start", "initial_data": {}, "results": {}, "state_history": [],
            "transitions": 0, "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z", "version": 0
        }))
        .unwrap()
    }

    fn write(job: &Job, version: u64, event: &str) -> PersistMsg {
        let mut job = job.clone();
        job.version = version;
        PersistMsg {
            write: Some(JobWrite {
                job,
                events: vec![crate::engine::event(
                    crate::engine::EventKind::Transition,
                    event,
                )],
                webhook: None,
            }),
            webhook_done: None,
            ack: None,
        }
    }

    fn barrier() -> PersistMsg {
        PersistMsg {
            write: None,
            webhook_done: None,
            ack: None,
        }
    }

    /// Writes made by tasks that were ready when the writer woke join its
    /// batch; a task that only sends after a timer does not hold it up.
    #[tokio::test(flavor = "current_thread")]
    async fn the_writes_of_ready_tasks_join_the_batch_and_nothing_waits_for_later_ones() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tx.send(barrier()).unwrap();
        // Ready now, each sending one write and waking the next one.
        let chain = tx.clone();
        tokio::spawn(async move {
            chain.send(barrier()).unwrap();
            tokio::task::yield_now().await;
            chain.send(barrier()).unwrap();
        });
        let late = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            let _ = late.send(barrier());
        });
        let mut incoming = Vec::new();
        assert_eq!(rx.recv_many(&mut incoming, MAX_BATCH).await, 1);
        let started = std::time::Instant::now();
        gather(&mut rx, &mut incoming).await;
        assert_eq!(incoming.len(), 3, "the ready task's two writes joined");
        assert!(started.elapsed() < std::time::Duration::from_secs(60));
        // Idle: one round, nothing added.
        let mut more = Vec::new();
        gather(&mut rx, &mut more).await;
        assert!(more.is_empty());
    }

    /// A job change copies the job for the writer under the engine's lock:
    /// the client's and workers' data go by reference, not byte by byte.
    #[test]
    fn a_job_write_shares_the_jobs_data_instead_of_copying_it() {
        let mut job = job();
        std::sync::Arc::make_mut(&mut job.initial_data)
            .insert("big".into(), serde_json::json!("x".repeat(1 << 20)));
        job.result = Some(std::sync::Arc::new(serde_json::Map::new()));
        let write = crate::engine::job_write(&mut job, Vec::new());
        assert!(std::sync::Arc::ptr_eq(
            &write.job.initial_data,
            &job.initial_data
        ));
        assert!(std::sync::Arc::ptr_eq(&write.job.results, &job.results));
        assert!(std::sync::Arc::ptr_eq(
            write.job.result.as_ref().unwrap(),
            job.result.as_ref().unwrap()
        ));
    }

    #[test]
    fn writes_of_one_job_in_a_batch_keep_the_latest_job_and_every_event() {
        let (a, b) = (job(), job());
        let mut batch = Batch::default();
        batch.add(write(&a, 1, "a1"));
        batch.add(write(&b, 1, "b1"));
        batch.add(write(&a, 2, "a2"));
        batch.add(write(&a, 3, "a3"));
        assert_eq!(batch.writes.len(), 2);
        let merged = &batch.writes[0];
        assert_eq!(merged.job.id, a.id);
        assert_eq!(merged.job.version, 3);
        let messages: Vec<&str> = merged
            .events
            .iter()
            .map(|e: &JobEvent| e.message.as_str())
            .collect();
        assert_eq!(messages, ["a1", "a2", "a3"]);
        assert_eq!(batch.writes[1].job.id, b.id);
        batch.clear();
        assert!(batch.writes.is_empty() && batch.index.is_empty());
    }
}
