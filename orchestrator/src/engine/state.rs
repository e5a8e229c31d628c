//! The machine's working set: jobs, queues, workers, timers, and what an
//! event leaves to do once it is committed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

use super::persist::PersistMsg;
use super::webhook;
use super::workers::{self, WorkerRecord};
use crate::job::{Job, TaskRecord};

/// What a timer does when it fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timer {
    /// The task was not picked up in time: the job fails.
    DispatchTimeout { job: Uuid, task_id: String },
    /// The worker did not answer in time: a `TIMEOUT_ERROR` failure.
    ResultTimeout { job: Uuid, task_id: String },
    /// Backoff is over: queue the task again.
    Retry { job: Uuid, task_id: String },
    /// A sleeping job's time is up: it goes on; or a waiting job's timeout
    /// passed. `step` is the job's transition count when it was armed (as
    /// text, stored as is): a timer armed in an earlier state does nothing.
    Wake { job: Uuid, step: String },
    /// A child job ended: its parent goes on. `outcome` is the child's
    /// `ChildOutcome` (`engine::machine`) as JSON (stored as is).
    ChildEnded { job: Uuid, outcome: String },
    /// The parent of `job` was cancelled: `job` is cancelled too.
    CancelChild { job: Uuid },
    /// Drop workers that stopped talking.
    WorkerSweep,
}

/// A task waiting in a queue.
#[derive(Debug, Clone)]
pub struct Queued {
    pub job: Uuid,
    pub task_id: String,
    pub seq: u64,
    /// Its place: when it was queued (µs since the epoch), moved earlier by
    /// [`PRIORITY_AGING`] per unit of the task's priority. Smallest first.
    pub rank: i64,
    /// The task is [`TaskRecord::constrained`] (a `requires`, a concurrency
    /// or rate key, a strategy): a take checks it against the worker before
    /// handing it out.
    pub constrained: bool,
}

impl Queued {
    /// Where it sorts in its queue.
    pub fn key(&self) -> (i64, u64) {
        (self.rank, self.seq)
    }
}

/// How much earlier one unit of priority puts a task in its queue: a task
/// of priority 2 goes before tasks of priority 0 queued up to two minutes
/// before it, and after older ones (so low priorities still move).
pub const PRIORITY_AGING: std::time::Duration = std::time::Duration::from_secs(60);

/// The rank of a task of `priority` queued at `at` (see [`Queued::rank`]).
pub fn rank(at: chrono::DateTime<chrono::Utc>, priority: f64) -> i64 {
    let aging = PRIORITY_AGING.as_micros() as f64;
    at.timestamp_micros()
        .saturating_sub((priority * aging).round() as i64)
}

/// One task type's queue, in the order tasks are handed out.
pub type TaskQueue = std::collections::BTreeMap<(i64, u64), Queued>;

/// Everything behind the engine's mutex.
#[derive(Default)]
pub struct EngineState {
    /// Boxed: the map's slots stay small, so growing it moves pointers,
    /// not whole jobs.
    pub jobs: HashMap<Uuid, Box<Job>>,
    /// Task type → tasks waiting for a worker, oldest first.
    pub queues: HashMap<String, TaskQueue>,
    pub workers: BTreeMap<String, WorkerRecord>,
    pub timers: BTreeMap<(Instant, u64), Timer>,
    pub seq: u64,
    /// Wakes `GET /jobs/{id}?wait=` callers when the job ends.
    pub job_waiters: HashMap<Uuid, Arc<Notify>>,
    /// Writes made under the lock, sent to the writer before it is released.
    pub outbox: Vec<PersistMsg>,
    /// Set when a timer earlier than the timer loop's next one was added.
    pub timers_changed: bool,
    /// End-of-job notifications to send once the lock is released.
    pub webhooks: Vec<webhook::Webhook>,
    /// Ended jobs still in memory, oldest first.
    pub retired: VecDeque<Uuid>,
    /// Owner → its jobs that have not ended (local holder only).
    pub active_by_owner: HashMap<String, usize>,
    /// How many of those to keep (from the settings).
    pub keep_finished: usize,
    /// This state holds only the workers an event touches (a shared
    /// database): whether anyone offers a task type is not known here.
    pub partial_workers: bool,
    /// On a shared database: tasks in flight per concurrency key, as the
    /// database counted them when this state was loaded, and those handed
    /// out since.
    pub keys_elsewhere: std::collections::HashMap<String, u32>,
    pub keys_taken: std::collections::HashMap<String, u32>,
    /// A task with a concurrency key was released (takers are woken: one
    /// waiting for that key may go); read by the shared database's write,
    /// which wakes the other instances' takers.
    pub keys_freed: bool,
    /// On a shared database: the concurrency keys and rate keys this state
    /// counted (locked for the transaction). A task queued by an earlier
    /// event of the same batch may have a key not among them; a take then
    /// passes it over (the next take claims it with its key counted).
    pub counted_keys: Option<CountedKeys>,
    /// Rate keys' buckets (see [`super::rates`]): on one instance kept
    /// here; on a shared database those of the tasks a take looked at,
    /// loaded with the state and written back.
    pub rates: HashMap<String, Instant>,
    /// Set by a take that passed over tasks for their rate keys or left
    /// them to a worker their strategy prefers: when the first of them may
    /// be its (the taker looks again then).
    pub again_at: Option<Instant>,
    /// Set by a take that found nothing: the taker as the dispatch
    /// strategies rank it, for its wait.
    pub standing: Option<super::strategy::Standing>,
    /// Tasks taken from their workers (job cancelled or ended while they
    /// ran), told to the workers' channels once the change is made.
    pub stops: Vec<TaskStop>,
}

/// See [`EngineState::counted_keys`].
#[derive(Debug, Default)]
pub struct CountedKeys {
    pub concurrency: std::collections::HashSet<String>,
    pub rate: std::collections::HashSet<String>,
}

/// A running task its worker should stop (see [`EngineState::stops`]).
#[derive(Debug, Clone)]
pub struct TaskStop {
    pub worker_id: String,
    pub task_id: String,
    pub job_id: Uuid,
}

impl EngineState {
    /// Task `task_id` of job `job`, when the job is here.
    pub fn task(&self, job: Uuid, task_id: &str) -> Option<&TaskRecord> {
        self.jobs
            .get(&job)
            .and_then(|j| j.tasks.iter().find(|t| t.task_id == task_id))
    }

    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Adds a timer; the key removes it again (see [`Self::drop_lease`]).
    pub fn add_timer(&mut self, at: Instant, timer: Timer) -> (Instant, u64) {
        let seq = self.next_seq();
        if self
            .timers
            .first_key_value()
            .is_none_or(|((first, _), _)| at < *first)
        {
            self.timers_changed = true;
        }
        self.timers.insert((at, seq), timer);
        (at, seq)
    }

    /// Forgets that `worker` holds `task_id`, and the lease timer with it
    /// (so answered tasks do not keep timers until their lease would end).
    pub fn release(&mut self, worker: &str, task_id: &str) {
        if let Some(held) = self
            .workers
            .get_mut(worker)
            .and_then(|w| w.in_flight.remove(task_id))
        {
            self.drop_lease(&held);
            if held.keyed {
                self.keys_freed = true;
                for w in self.workers.values() {
                    w.wake.notify_one();
                }
            }
        }
    }

    pub fn drop_lease(&mut self, held: &workers::Held) {
        if let Some(key) = held.lease {
            self.timers.remove(&key);
        }
    }
}
