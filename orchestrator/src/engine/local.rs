//! One instance alone: the working set in memory behind one mutex, each
//! change sent, in order, to the write-behind writer ([`super::persist`])
//! over SQLite or memory storage, and the timer loop.
//!
//! Every operation takes the lock through a [`Tx`]; when the `Tx` is
//! dropped, the event's writes go to the writer (still under the lock, so
//! they keep their order) and the rest of its effects to
//! [`super::effects::AfterCommit::apply`].

use std::sync::{Arc, Mutex, MutexGuard};

use chrono::Utc;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

use super::effects::{AfterCommit, Take, Wake};
use super::persist::{self, PersistMsg};
use super::workers::WorkerView;
use super::{EngineError, EngineState, NewJob, Shared, Timer, machine};
use crate::blueprint::Blueprint;
use crate::job::Job;
use crate::storage::{Storage, StorageError};

/// The local holder: see the module's documentation.
pub(crate) struct Local {
    state: Mutex<EngineState>,
    /// Read from directly (on blocking threads); written only by the writer.
    storage: Arc<dyn Storage>,
    writer: mpsc::UnboundedSender<PersistMsg>,
    /// Woken when a timer earlier than the timer loop's next one is added.
    timer_wake: Notify,
}

impl Local {
    /// The holder, with its writer started over `storage`.
    pub(crate) fn new(storage: Arc<dyn Storage>, keep_finished: usize) -> Self {
        let (writer, _handle) = persist::spawn_writer(storage.clone());
        Self {
            storage,
            state: Mutex::new(EngineState {
                keep_finished,
                ..EngineState::default()
            }),
            writer,
            timer_wake: Notify::new(),
        }
    }

    /// The storage call `f`, off the async threads.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Storage) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let storage = self.storage.clone();
        tokio::task::spawn_blocking(move || f(storage.as_ref()))
            .await
            .map_err(|e| StorageError::Backend(e.to_string()))?
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, EngineState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lock for one event: see [`Tx`].
    pub(crate) fn tx<'a>(&'a self, shared: &'a Arc<Shared>) -> Tx<'a> {
        Tx {
            local: self,
            shared,
            st: self.lock(),
        }
    }

    /// Reloads the jobs that had not ended, arms the worker sweep and
    /// starts the timer loop.
    pub(crate) async fn start(&self, shared: &Arc<Shared>) -> Result<(), StorageError> {
        let unfinished = self.blocking(|s| s.unfinished_jobs()).await?;
        let count = unfinished.len();
        // Child jobs: a parent still waiting for a child that ended, and a
        // child whose parent ended (was cancelled), each a change a crash
        // lost; their timers are armed again below.
        let open: std::collections::HashSet<Uuid> = unfinished.iter().map(|j| j.id).collect();
        let mut ended_children = Vec::new();
        for job in &unfinished {
            if job.status == crate::job::JobStatus::WaitingForSubJob
                && let Some(child) = job.child.filter(|c| !open.contains(c))
                && let Some(child) = self.blocking(move |s| s.get_job(child)).await?
                && child.status.is_terminal()
            {
                ended_children.push(child);
            }
        }
        let orphans: Vec<Uuid> = unfinished
            .iter()
            .filter(|j| j.parent.as_ref().is_some_and(|p| !open.contains(&p.job)))
            .map(|j| j.id)
            .collect();
        {
            let mut st = self.tx(shared);
            st.add_timer(
                Instant::now() + shared.settings.sweep_interval,
                Timer::WorkerSweep,
            );
            for job in unfinished {
                machine::recover(shared, &mut st, job);
            }
            for child in &ended_children {
                machine::arm_child_ended(&mut st, child);
            }
            for child in orphans {
                st.add_timer(Instant::now(), Timer::CancelChild { job: child });
            }
        }
        if count > 0 {
            tracing::info!("recovered {count} unfinished job(s) from storage");
        }
        tokio::spawn(timer_loop(shared.clone()));
        Ok(())
    }

    /// Creates a job; returns once it is durable.
    pub(crate) async fn create(
        &self,
        shared: &Arc<Shared>,
        id: Uuid,
        bp: &Blueprint,
        new: NewJob,
    ) -> Result<(), EngineError> {
        let max = new
            .max_active
            .unwrap_or(shared.settings.max_active_jobs_per_client);
        let (ack, durable) = oneshot::channel();
        {
            let mut st = self.tx(shared);
            if st.active_by_owner.get(&new.owner).copied().unwrap_or(0) >= max {
                return Err(EngineError::too_many_active_jobs(max, &new.owner));
            }
            machine::create(shared, &mut st, id, bp, new);
            // Acknowledged by the writer once the writes before it are.
            st.outbox.push(PersistMsg {
                write: None,
                webhook_done: None,
                ack: Some(ack),
            });
        }
        match durable.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(EngineError::Storage(e)),
            Err(_) => Err(EngineError::Storage("the storage writer stopped".into())),
        }
    }

    /// Waits until every change made so far is durable.
    pub(crate) async fn sync(&self) {
        let (ack, done) = oneshot::channel();
        if self.send(PersistMsg {
            write: None,
            webhook_done: None,
            ack: Some(ack),
        }) {
            let _ = done.await;
        }
    }

    /// A webhook is done with: its row goes.
    pub(crate) fn webhook_done(&self, job_id: Uuid) {
        self.send(PersistMsg {
            write: None,
            webhook_done: Some(job_id),
            ack: None,
        });
    }

    fn send(&self, msg: PersistMsg) -> bool {
        let sent = self.writer.send(msg).is_ok();
        if !sent {
            tracing::error!("the storage writer is gone; a change was not saved");
        }
        sent
    }

    pub(crate) async fn get_job(&self, id: Uuid) -> Result<Option<Job>, StorageError> {
        if let Some(job) = self.lock().jobs.get(&id) {
            return Ok(Some(Job::clone(job)));
        }
        self.blocking(move |s| s.get_job(id)).await
    }

    pub(crate) fn with_job_in_memory<T>(
        &self,
        id: Uuid,
        f: impl FnOnce(&Job, Option<String>) -> T,
    ) -> Option<T> {
        let st = self.lock();
        let job = st.jobs.get(&id)?;
        Some(f(job, machine::waiting_reason(&st, job)))
    }

    /// Armed to fire when the job ends; `None` when it has ended or is
    /// not held here.
    pub(crate) fn end_of(&self, id: Uuid) -> Option<Wake> {
        let mut st = self.lock();
        match st.jobs.get(&id) {
            // Armed under the lock: the end cannot slip in between.
            Some(job) if !job.status.is_terminal() => {
                Some(Wake::armed(st.job_waiters.entry(id).or_default().clone()))
            }
            _ => None,
        }
    }

    /// Takes the next task `worker_id` can run; the wake-up for when one
    /// is queued (a permit: one queued meanwhile is not missed).
    pub(crate) fn take(&self, shared: &Arc<Shared>, worker_id: &str) -> Result<Take, EngineError> {
        let mut st = self.tx(shared);
        let Some(worker) = st.workers.get_mut(worker_id) else {
            return Err(EngineError::UnknownWorker(worker_id.to_string()));
        };
        worker.last_seen = Instant::now();
        let wake = Wake::Permit(worker.wake.clone());
        let task = machine::take_task(shared, &mut st, worker_id);
        Ok(Take {
            task,
            wake,
            again_at: st.again_at,
            standing: st.standing.take(),
        })
    }

    pub(crate) fn register(
        &self,
        shared: &Arc<Shared>,
        reg: &rxon::WorkerRegistration,
    ) -> Result<(), EngineError> {
        let mut st = self.tx(shared);
        let max = shared.settings.max_workers;
        if !st.workers.contains_key(&reg.worker_id) && st.workers.len() >= max {
            return Err(EngineError::too_many_workers(max, &reg.worker_id));
        }
        machine::register_worker(shared, &mut st, reg);
        Ok(())
    }

    pub(crate) fn workers(&self) -> Vec<WorkerView> {
        self.lock().workers.values().map(|w| w.view()).collect()
    }

    pub(crate) fn metrics_snapshot(&self) -> crate::metrics::Snapshot {
        let st = self.lock();
        let now = Utc::now();
        let queues = st
            .queues
            .iter()
            .map(|(task_type, queue)| {
                let oldest = queue.values().min_by_key(|q| q.seq).and_then(|q| {
                    let task = st.task(q.job, &q.task_id)?;
                    Some((now - task.queued_at).num_milliseconds().max(0) as f64 / 1e3)
                });
                (task_type.clone(), queue.len(), oldest.or(Some(0.0)))
            })
            .collect();
        crate::metrics::Snapshot {
            queues,
            in_flight: st.workers.values().map(|w| w.in_flight.len()).sum(),
            workers: st.workers.len(),
        }
    }

    /// Drops deleted jobs from memory, so a read of one is 404 as it is
    /// from storage.
    pub(crate) fn forget(&self, ids: &[Uuid]) {
        let mut st = self.lock();
        for id in ids {
            if st.jobs.get(id).is_some_and(|j| j.status.is_terminal()) {
                st.jobs.remove(id);
            }
        }
    }
}

/// Fires due timers; ends once nothing but it holds the engine.
async fn timer_loop(shared: Arc<Shared>) {
    let Some(local) = shared.backend.local() else {
        return;
    };
    loop {
        let next = local
            .lock()
            .timers
            .first_key_value()
            .map(|((at, _), _)| *at);
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            _ = local.timer_wake.notified() => continue,
        }
        if Arc::strong_count(&shared) <= 1 {
            return;
        }
        let now = Instant::now();
        let mut st = local.tx(&shared);
        while let Some(entry) = st.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            machine::fire(&shared, &mut st, timer);
        }
    }
}

/// The engine lock, held for one event. Whatever the event changed is sent
/// on when it is dropped, while the lock is still held (so writes keep
/// their order): the storage writes, the timer loop's wake-up, then the
/// effects every backend has ([`AfterCommit::apply`]). Nothing to forget
/// at the end of a handler.
pub(crate) struct Tx<'a> {
    local: &'a Local,
    shared: &'a Arc<Shared>,
    st: MutexGuard<'a, EngineState>,
}

impl std::ops::Deref for Tx<'_> {
    type Target = EngineState;
    fn deref(&self) -> &EngineState {
        &self.st
    }
}

impl std::ops::DerefMut for Tx<'_> {
    fn deref_mut(&mut self) -> &mut EngineState {
        &mut self.st
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        let st = &mut *self.st;
        let mut after = AfterCommit::default();
        for write in st.outbox.iter().filter_map(|m| m.write.as_ref()) {
            after.saw(write);
            after.changed(&write.job, self.shared);
        }
        for msg in st.outbox.drain(..) {
            self.local.send(msg);
        }
        if std::mem::take(&mut st.timers_changed) {
            self.local.timer_wake.notify_one();
        }
        after.stops = std::mem::take(&mut st.stops);
        after.webhooks = std::mem::take(&mut st.webhooks);
        after.apply(self.shared);
    }
}
