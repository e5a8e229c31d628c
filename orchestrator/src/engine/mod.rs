//! The job engine: the state machine that moves jobs through their
//! blueprints, the task queues workers poll, worker liveness, and timers.
//!
//! All state sits behind one mutex, held only for short, non-blocking
//! sections. Every change to a job is sent, in order, to the storage writer
//! ([`persist`]). Deadlines use one clock on purpose: tokio's monotonic
//! [`Instant`] (so tests can pause time); wall-clock time is only used for the
//! timestamps people read and for checking signed message timestamps.
//!
//! - [`machine`]: what happens to a job on each event.
//! - [`workers`]: the worker registry.
//! - [`persist`]: the ordered, batching storage writer.
//! - [`retention`]: ended jobs deleted after `finished_job_retention`.

pub mod deploy;
pub mod error;
pub(crate) mod machine;
pub mod persist;
pub mod retention;
pub(crate) mod shared_db;
pub mod webhook;
pub mod workers;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

use crate::blueprint::{Blueprint, Catalog};
use crate::job::{Job, JobEvent, JobStatus, Object};
use crate::registry::PluginRegistry;
use crate::storage::{JobFilter, JobWrite, Storage, StorageError};
pub use error::EngineError;
use persist::PersistMsg;
use workers::{WorkerRecord, WorkerView};

/// Tunables of the engine.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// A worker not heard from for this long is dropped and its tasks
    /// requeued, unless it declares its heartbeat interval (then two
    /// intervals plus [`TTL_MARGIN`]).
    pub worker_ttl: Duration,
    /// Lease of a handed-out task whose blueprint and job set no result
    /// timeout: past it, the task fails with `TIMEOUT_ERROR` (and is retried).
    pub default_result_timeout: Duration,
    /// The longest liveness a worker's declared heartbeat interval earns
    /// (a worker declaring a day would hold its tasks a day after dying).
    pub max_worker_ttl: Duration,
    /// A task handed out longer ago than this that the worker's heartbeat no
    /// longer lists goes back to the queue.
    pub unlisted_task_grace: Duration,
    /// `ORCHESTRATOR_SECRET_KEY`: when set, every task handed out carries
    /// `sig` (HMAC-SHA256 over the payload), as avtomatika's do.
    pub task_secret: Option<String>,
    /// Most registered workers; a new id past it gets 429.
    pub max_workers: usize,
    /// Most jobs one client may have that have not ended; a create past
    /// it gets 429 with `Retry-After`.
    pub max_active_jobs_per_client: usize,
    /// Most skills one worker may declare (400 past it).
    pub max_skills_per_worker: usize,
    /// Webhook egress: private addresses allowed besides public ones.
    pub webhook_allowed_hosts: Vec<String>,
    /// Most webhook requests in flight at once.
    pub max_concurrent_webhooks: usize,
    /// Most webhook requests in flight for one client's jobs.
    pub max_webhooks_per_client: usize,
    /// Most webhook requests in flight to one target host.
    pub max_webhooks_per_host: usize,
    /// Longest a long-poll may wait.
    pub max_poll_wait: Duration,
    /// Transitions one job may take before it is failed as a runaway loop.
    pub max_transitions: u32,
    /// Largest plugin component accepted by the registry.
    pub max_plugin_bytes: usize,
    /// Several instances on one PostgreSQL database: its URL. The database
    /// is then the source of truth (see [`shared_db`]).
    pub shared_database: Option<String>,
    /// How often worker liveness is checked.
    pub sweep_interval: Duration,
    /// A worker whose task channel closed and that is not heard from again
    /// within this is gone: its tasks go back to the queue (workers that
    /// only poll over HTTP keep the heartbeat rule).
    pub channel_grace: Duration,
    /// Ended jobs kept in memory for fast reads; older ones are read from storage.
    pub finished_jobs_in_memory: usize,
    /// On a shared database: a webhook whose delivering instance has not
    /// renewed its lease for this long is taken over by another instance.
    pub webhook_lease: Duration,
    /// Finished, failed and cancelled jobs that last changed longer ago than
    /// this are deleted with their history ([`retention`]); `None`: kept.
    pub finished_job_retention: Option<Duration>,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            worker_ttl: Duration::from_secs(35),
            default_result_timeout: Duration::from_secs(3600),
            max_worker_ttl: Duration::from_secs(DEFAULT_MAX_WORKER_TTL_SECS),
            unlisted_task_grace: Duration::from_secs(10),
            task_secret: None,
            max_workers: 1000,
            max_active_jobs_per_client: DEFAULT_MAX_ACTIVE_JOBS_PER_CLIENT,
            max_skills_per_worker: 1024,
            webhook_allowed_hosts: Vec::new(),
            max_concurrent_webhooks: 64,
            max_webhooks_per_client: 16,
            max_webhooks_per_host: 16,
            max_poll_wait: Duration::from_secs(30),
            max_transitions: 100,
            sweep_interval: Duration::from_secs(1),
            channel_grace: Duration::from_secs(DEFAULT_CHANNEL_GRACE_SECS),
            max_plugin_bytes: crate::registry::DEFAULT_MAX_PLUGIN_BYTES,
            shared_database: None,
            finished_jobs_in_memory: 10_000,
            finished_job_retention: None,
            webhook_lease: Duration::from_secs(DEFAULT_WEBHOOK_LEASE_SECS),
        }
    }
}

/// On a shared database: the longest a deploy made elsewhere goes unseen
/// if its change was missed.
const DEPLOYS_FALLBACK: Duration = Duration::from_secs(30);

/// Default of [`EngineSettings::webhook_lease`]: longer than a delivery's
/// five attempts with their pauses (about 65 s at most).
pub const DEFAULT_WEBHOOK_LEASE_SECS: u64 = 120;

/// Default of [`EngineSettings::max_active_jobs_per_client`].
pub const DEFAULT_MAX_ACTIVE_JOBS_PER_CLIENT: usize = 10_000;

/// Default of [`EngineSettings::max_worker_ttl`] (`max_worker_ttl_seconds`).
pub const DEFAULT_MAX_WORKER_TTL_SECS: u64 = 300;

/// Default of [`EngineSettings::channel_grace`] (`channel_grace_seconds`).
pub const DEFAULT_CHANNEL_GRACE_SECS: u64 = 3;

/// Job changes kept for slow update streams; one that falls further behind
/// is told how many it missed.
pub const UPDATES_BUFFER: usize = 4096;
/// Most update streams open at once (429 past it).
pub const MAX_UPDATE_STREAMS: usize = 256;

/// A job's new status, as `GET /jobs/stream` sends it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobUpdate {
    pub job_id: Uuid,
    #[serde(skip)]
    pub owner: String,
    pub blueprint: String,
    pub status: JobStatus,
    pub current_state: String,
    pub created_at: chrono::DateTime<Utc>,
    pub updated_at: chrono::DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<chrono::DateTime<Utc>>,
    /// The running task's last progress report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<serde_json::Value>,
}

impl JobUpdate {
    pub fn of(job: &Job) -> Self {
        Self {
            job_id: job.id,
            owner: job.owner.clone(),
            blueprint: job.blueprint.clone(),
            status: job.status,
            current_state: job.current_state.clone(),
            created_at: job.created_at,
            updated_at: job.updated_at,
            finished_at: job.finished_at,
            progress: job.progress.clone(),
        }
    }
}

/// Most task ids a heartbeat may list; more is refused (400).
pub const MAX_HEARTBEAT_TASKS: usize = 10_000;

/// Added to two heartbeat intervals to make a worker's time to live.
pub const TTL_MARGIN: Duration = Duration::from_secs(5);

/// What a timer does when it fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timer {
    /// The task was not picked up in time: the job fails.
    DispatchTimeout { job: Uuid, task_id: String },
    /// The worker did not answer in time: a `TIMEOUT_ERROR` failure.
    ResultTimeout { job: Uuid, task_id: String },
    /// Backoff is over: queue the task again.
    Retry { job: Uuid, task_id: String },
    /// Drop workers that stopped talking.
    WorkerSweep,
}

/// A task waiting in a queue.
#[derive(Debug, Clone)]
pub struct Queued {
    pub job: Uuid,
    pub task_id: String,
    pub seq: u64,
}

/// Everything behind the engine's mutex.
#[derive(Default)]
pub struct EngineState {
    /// Boxed: the map's slots stay small, so growing it moves pointers,
    /// not whole jobs (docs/benchmarks.md, fifth pass).
    pub jobs: HashMap<Uuid, Box<Job>>,
    /// Task type → tasks waiting for a worker, oldest first.
    pub queues: HashMap<String, VecDeque<Queued>>,
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
    /// Tasks taken from their workers (job cancelled or ended while they
    /// ran), told to the workers' channels once the change is made.
    pub stops: Vec<TaskStop>,
}

/// A running task its worker should stop (see [`EngineState::stops`]).
#[derive(Debug, Clone)]
pub struct TaskStop {
    pub worker_id: String,
    pub task_id: String,
    pub job_id: Uuid,
}

/// Stop notices buffered for slow channel sessions (a session that lags
/// behind loses some; its worker's next heartbeat still learns of them).
pub const STOPS_BUFFER: usize = 1024;

impl EngineState {
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
        }
    }

    pub fn drop_lease(&mut self, held: &workers::Held) {
        if let Some(key) = held.lease {
            self.timers.remove(&key);
        }
    }
}

impl Shared {
    /// Tells the channel sessions listening which tasks to stop.
    pub(crate) fn send_stops(&self, stops: &mut Vec<TaskStop>) {
        for stop in stops.drain(..) {
            if self.stops.receiver_count() == 0 {
                break;
            }
            let _ = self.stops.send(stop);
        }
    }

    /// The blueprint version `job` runs on.
    pub(crate) fn blueprint_of(&self, job: &Job) -> Option<Arc<Blueprint>> {
        self.catalog.get(&job.blueprint, job.blueprint_version)
    }
}

pub(crate) struct Shared {
    pub state: Mutex<EngineState>,
    pub catalog: Arc<Catalog>,
    pub registry: Arc<PluginRegistry>,
    /// Set when several instances share a PostgreSQL database.
    pub db: Option<Arc<shared_db::SharedDb>>,
    /// Every job change made here, for `GET /jobs/stream`.
    pub updates: tokio::sync::broadcast::Sender<JobUpdate>,
    /// Tasks to stop, for the workers' channels.
    pub stops: tokio::sync::broadcast::Sender<TaskStop>,
    /// One permit per open update stream.
    pub stream_permits: Arc<tokio::sync::Semaphore>,
    pub storage: Arc<dyn Storage>,
    pub writer: mpsc::UnboundedSender<PersistMsg>,
    pub timer_wake: Notify,
    pub settings: EngineSettings,
    pub http: reqwest::Client,
    /// Cancelled when the server stops: long-polls answer at once.
    pub stopping: tokio_util::sync::CancellationToken,
    /// Where webhooks may connect.
    pub egress: Arc<crate::egress::EgressPolicy>,
    /// One permit per webhook request in flight.
    pub webhook_permits: Arc<tokio::sync::Semaphore>,
    /// Webhook deliveries per client and per target host.
    pub webhook_clients: Arc<webhook::Lanes>,
    pub webhook_hosts: Arc<webhook::Lanes>,
}

/// Handle to the engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub(crate) shared: Arc<Shared>,
}

/// Options of a new job besides its data.
#[derive(Debug, Clone, Default)]
pub struct NewJob {
    pub blueprint: String,
    pub owner: String,
    pub initial_data: Object,
    pub webhook_url: Option<String>,
    pub dispatch_timeout: Option<f64>,
    pub result_timeout: Option<f64>,
}

impl Engine {
    /// Starts the engine: reloads unfinished jobs from `storage`, starts the
    /// writer and the timer loop.
    pub async fn start(
        blueprints: Vec<Blueprint>,
        storage: Arc<dyn Storage>,
        settings: EngineSettings,
    ) -> Result<Self, StorageError> {
        let rows = {
            let storage = storage.clone();
            tokio::task::spawn_blocking(move || storage.registry_rows())
                .await
                .map_err(|e| StorageError::Backend(e.to_string()))??
        };
        let db = match &settings.shared_database {
            Some(url) => Some(
                shared_db::SharedDb::connect(url)
                    .await
                    .map_err(|e| StorageError::Backend(e.to_string()))?,
            ),
            None => None,
        };
        let (writer, _writer_handle) = persist::spawn_writer(storage.clone());
        let egress = Arc::new(crate::egress::EgressPolicy::new(
            &settings.webhook_allowed_hosts,
        ));
        let webhook_clients = webhook::Lanes::new(settings.max_webhooks_per_client);
        let webhook_hosts = webhook::Lanes::new(settings.max_webhooks_per_host);
        let webhook_permits = Arc::new(tokio::sync::Semaphore::new(
            settings.max_concurrent_webhooks.max(1),
        ));
        let shared = Arc::new(Shared {
            state: Mutex::new(EngineState {
                keep_finished: settings.finished_jobs_in_memory,
                ..EngineState::default()
            }),
            catalog: Arc::new(Catalog::default()),
            registry: Arc::new(PluginRegistry::from_rows(&rows, settings.max_plugin_bytes)),
            db: db.clone(),
            updates: tokio::sync::broadcast::Sender::new(UPDATES_BUFFER),
            stops: tokio::sync::broadcast::Sender::new(STOPS_BUFFER),
            stream_permits: Arc::new(tokio::sync::Semaphore::new(MAX_UPDATE_STREAMS)),
            storage: storage.clone(),
            writer,
            timer_wake: Notify::new(),
            settings,
            stopping: tokio_util::sync::CancellationToken::new(),
            egress: egress.clone(),
            webhook_permits,
            webhook_clients,
            webhook_hosts,
            // Webhooks: each attempt bounded, no redirects followed, only
            // addresses the egress policy allows (checked after resolution),
            // and never through HTTP(S)_PROXY (a proxy would connect to
            // addresses the check never saw).
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(webhook::ATTEMPT_TIMEOUT)
                .connect_timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .dns_resolver(Arc::new(crate::egress::PolicyResolver(egress.clone())))
                .build()
                .map_err(|e| {
                    StorageError::Backend(format!("cannot build the webhook HTTP client: {e}"))
                })?,
        });
        let engine = Self { shared };
        engine
            .install_blueprints(&rows.blueprints, blueprints)
            .await?;
        if let Some(keep) = engine.shared.settings.finished_job_retention {
            tokio::spawn(retention::run(engine.shared.clone(), keep));
        }
        if let Some(db) = &db {
            tracing::info!(
                "several instances may share this database: the queue, timers, leases and workers live in it"
            );
            tokio::spawn(db.clone().listen());
            tokio::spawn(db.clone().maintenance_loop(engine.shared.clone()));
            // Deploys made through another instance take effect here within
            // a second (the maintenance loop sees them), or at the latest
            // after [`DEPLOYS_FALLBACK`].
            let refresher = engine.clone();
            let seen = db.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = seen.deploys.notified() => {}
                        _ = tokio::time::sleep(DEPLOYS_FALLBACK) => {}
                        _ = refresher.shared.stopping.cancelled() => return,
                    }
                    if let Err(e) = refresher.refresh_deploys().await {
                        tracing::warn!("cannot read deploys from the database: {e}");
                    }
                }
            });
            return Ok(engine);
        }
        let unfinished = {
            let storage = storage.clone();
            tokio::task::spawn_blocking(move || storage.unfinished_jobs())
                .await
                .map_err(|e| StorageError::Backend(e.to_string()))??
        };
        let pending_hooks = {
            let storage = storage.clone();
            tokio::task::spawn_blocking(move || storage.pending_webhooks())
                .await
                .map_err(|e| StorageError::Backend(e.to_string()))??
        };
        if !pending_hooks.is_empty() {
            tracing::info!(
                "delivering {} end-of-job webhook(s) still pending from before the restart",
                pending_hooks.len()
            );
        }
        for pending in pending_hooks {
            let hook = webhook::Webhook::from_pending(pending);
            tokio::spawn(hook.deliver(engine.shared.clone()));
        }
        let count = unfinished.len();
        {
            let mut st = engine.tx();
            let now = Instant::now();
            st.add_timer(
                now + engine.shared.settings.sweep_interval,
                Timer::WorkerSweep,
            );
            for job in unfinished {
                machine::recover(&engine.shared, &mut st, job);
            }
        }
        if count > 0 {
            tracing::info!("recovered {count} unfinished job(s) from storage");
        }
        tokio::spawn(engine.clone().timer_loop());
        Ok(engine)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, EngineState> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The engine lock for one event: see [`Tx`].
    pub(crate) fn tx(&self) -> Tx<'_> {
        Tx {
            engine: self,
            st: self.lock(),
        }
    }

    /// Sends queued writes to the writer (keeps their order), wakes the
    /// timer loop if needed and starts owed webhooks; [`Tx`] calls it when
    /// it is dropped.
    fn flush(&self, st: &mut EngineState) {
        let mut observed = Vec::new();
        for write in st.outbox.iter().filter_map(|m| m.write.as_ref()) {
            crate::metrics::observations(write, &mut observed);
        }
        crate::metrics::record(observed);
        if self.shared.updates.receiver_count() > 0 {
            for write in st.outbox.iter().filter_map(|m| m.write.as_ref()) {
                let _ = self.shared.updates.send(JobUpdate::of(&write.job));
            }
        }
        self.shared.send_stops(&mut st.stops);
        for msg in st.outbox.drain(..) {
            if self.shared.writer.send(msg).is_err() {
                tracing::error!("the storage writer is gone; a job change was not saved");
            }
        }
        if std::mem::take(&mut st.timers_changed) {
            self.shared.timer_wake.notify_one();
        }
        for hook in st.webhooks.drain(..) {
            tokio::spawn(hook.deliver(self.shared.clone()));
        }
    }

    /// The version of `name` new jobs use.
    pub fn blueprint(&self, name: &str) -> Option<Arc<Blueprint>> {
        self.shared.catalog.current(name)
    }

    /// The current version of every blueprint.
    pub fn blueprints(&self) -> Vec<Arc<Blueprint>> {
        self.shared.catalog.all_current()
    }

    pub fn catalog(&self) -> &Catalog {
        &self.shared.catalog
    }

    pub fn registry(&self) -> &PluginRegistry {
        &self.shared.registry
    }

    /// Tasks their workers should stop, from now on (decided by this
    /// instance).
    pub fn subscribe_stops(&self) -> tokio::sync::broadcast::Receiver<TaskStop> {
        self.shared.stops.subscribe()
    }

    /// Job changes from now on (made by this instance).
    pub fn subscribe_updates(&self) -> tokio::sync::broadcast::Receiver<JobUpdate> {
        self.shared.updates.subscribe()
    }

    /// A permit to hold while an update stream is open; `None` past
    /// [`MAX_UPDATE_STREAMS`].
    pub fn stream_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.shared.stream_permits.clone().try_acquire_owned().ok()
    }

    /// Cancelled when the server begins to stop.
    pub fn stopping(&self) -> tokio_util::sync::CancellationToken {
        self.shared.stopping.clone()
    }

    pub fn storage(&self) -> Arc<dyn Storage> {
        self.shared.storage.clone()
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.shared.settings
    }

    /// Creates a job and starts it; returns once it is durably stored.
    pub async fn create_job(&self, new: NewJob) -> Result<Uuid, EngineError> {
        let blueprint = self.blueprint(&new.blueprint).ok_or_else(|| {
            EngineError::InvalidJob(format!("unknown blueprint {}", new.blueprint))
        })?;
        for (name, v) in [
            ("dispatch_timeout", new.dispatch_timeout),
            ("result_timeout", new.result_timeout),
        ] {
            if let Some(v) = v {
                crate::secs::timeout(name, v)
                    .map_err(|e| EngineError::InvalidJob(e.to_string()))?;
            }
        }
        // Time-ordered (UUIDv7): jobs created together sit together in the
        // storage's indexes, so a batch of new jobs dirties a few pages
        // instead of one page per job.
        let id = Uuid::now_v7();
        let max = self.shared.settings.max_active_jobs_per_client;
        if let Some(db) = &self.shared.db {
            if db.active_jobs(&new.owner).await? >= max {
                return Err(EngineError::too_many_active_jobs(max, &new.owner));
            }
            db.create(&self.shared, id, &blueprint, new).await?;
            return Ok(id);
        }
        let (ack_tx, ack_rx) = oneshot::channel();
        {
            let mut st = self.tx();
            if st.active_by_owner.get(&new.owner).copied().unwrap_or(0) >= max {
                return Err(EngineError::too_many_active_jobs(max, &new.owner));
            }
            machine::create(&self.shared, &mut st, id, &blueprint, new, ack_tx);
        }
        match ack_rx.await {
            Ok(Ok(())) => Ok(id),
            Ok(Err(e)) => Err(EngineError::Storage(e)),
            Err(_) => Err(EngineError::Storage("the storage writer stopped".into())),
        }
    }

    /// Ends every waiting long-poll (with "no task") and refuses to wait in
    /// new ones, so a graceful shutdown is not held up by idle workers.
    pub fn begin_shutdown(&self) {
        self.shared.stopping.cancel();
    }

    /// Waits until every change made so far is durable.
    pub async fn sync_storage(&self) {
        let (ack, done) = oneshot::channel();
        if self
            .shared
            .writer
            .send(PersistMsg {
                write: None,
                webhook_done: None,
                ack: Some(ack),
            })
            .is_ok()
        {
            let _ = done.await;
        }
    }

    /// A job, from memory or storage.
    pub async fn get_job(&self, id: Uuid) -> Result<Option<Job>, StorageError> {
        if let Some(db) = &self.shared.db {
            return Ok(db.get_job(id).await?);
        }
        if let Some(job) = self.lock().jobs.get(&id) {
            return Ok(Some(Job::clone(job)));
        }
        let storage = self.shared.storage.clone();
        tokio::task::spawn_blocking(move || storage.get_job(id))
            .await
            .map_err(|e| StorageError::Backend(e.to_string()))?
    }

    /// `f` applied to a job this instance holds in memory, with why it
    /// waits, under the engine's lock (no copy of the job: `f` should be
    /// short, e.g. serialize it). `None` when the job is not in memory (it
    /// ended a while ago, or jobs live in a shared database).
    pub fn with_job_in_memory<T>(
        &self,
        id: Uuid,
        f: impl FnOnce(&Job, Option<String>) -> T,
    ) -> Option<T> {
        if self.shared.db.is_some() {
            return None;
        }
        let st = self.lock();
        let job = st.jobs.get(&id)?;
        Some(f(job, machine::waiting_reason(&st, job)))
    }

    /// Waits up to `wait` for the job to reach a terminal status.
    pub async fn wait_for_job(&self, id: Uuid, wait: Duration) {
        let deadline = Instant::now() + wait;
        if let Some(db) = &self.shared.db {
            loop {
                let ended = db.jobs.notified();
                tokio::pin!(ended);
                ended.as_mut().enable();
                match db.get_job(id).await {
                    Ok(Some(job)) if !job.status.is_terminal() => {}
                    _ => return,
                }
                tokio::select! {
                    _ = ended => {}
                    _ = tokio::time::sleep_until(deadline) => return,
                    _ = self.shared.stopping.cancelled() => return,
                }
            }
        }
        let notify = {
            let mut st = self.tx();
            match st.jobs.get(&id) {
                Some(job) if !job.status.is_terminal() => {
                    st.job_waiters.entry(id).or_default().clone()
                }
                _ => return,
            }
        };
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self
            .lock()
            .jobs
            .get(&id)
            .is_none_or(|j| j.status.is_terminal())
        {
            return;
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline) => {}
            // Shutting down: answer with the job as it is now.
            _ = self.shared.stopping.cancelled() => {}
        }
    }

    pub async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<Job>, StorageError> {
        if let Some(db) = &self.shared.db {
            return Ok(db.list_jobs(&filter).await?);
        }
        let storage = self.shared.storage.clone();
        tokio::task::spawn_blocking(move || storage.list_jobs(&filter))
            .await
            .map_err(|e| StorageError::Backend(e.to_string()))?
    }

    pub async fn job_events(&self, id: Uuid) -> Result<Vec<JobEvent>, StorageError> {
        if let Some(db) = &self.shared.db {
            return Ok(db.job_events(id).await?);
        }
        let storage = self.shared.storage.clone();
        tokio::task::spawn_blocking(move || storage.job_events(id))
            .await
            .map_err(|e| StorageError::Backend(e.to_string()))?
    }

    /// Cancels a job that has not ended; `Err` says why not.
    pub async fn cancel_job(&self, id: Uuid, owner: &str) -> Result<(), EngineError> {
        if let Some(db) = &self.shared.db {
            return db.cancel(&self.shared, id, owner).await;
        }
        machine::cancel(&mut self.tx(), id, owner)
    }

    /// Why a waiting job waits, e.g. no worker offers its task type.
    pub async fn waiting_reason(&self, job: &Job) -> Option<String> {
        // Most polled jobs are not waiting for a worker: their reason comes
        // from the job alone, without the worker list (lock or database).
        if !machine::waits_for_worker(job) {
            return machine::waiting_reason(&EngineState::default(), job);
        }
        if let Some(db) = &self.shared.db {
            return db.waiting_reason(job).await.ok().flatten();
        }
        let st = self.lock();
        machine::waiting_reason(&st, job)
    }

    // ----- workers -----

    /// Registers a worker; `Err` when a new id would pass `max_workers`.
    pub async fn register_worker(&self, reg: &rxon::WorkerRegistration) -> Result<(), EngineError> {
        if let Some(db) = &self.shared.db {
            return db.register(&self.shared, reg).await;
        }
        let mut st = self.tx();
        let max = self.shared.settings.max_workers;
        if !st.workers.contains_key(&reg.worker_id) && st.workers.len() >= max {
            return Err(EngineError::too_many_workers(max, &reg.worker_id));
        }
        machine::register_worker(&self.shared, &mut st, reg);
        Ok(())
    }

    /// Records a worker message's replay key; false when an instance
    /// sharing the database saw it already (one instance alone checks in
    /// memory, in [`crate::api::auth::Auth`]).
    pub async fn remember_nonce(&self, key: &str) -> Result<bool, EngineError> {
        match &self.shared.db {
            Some(db) => Ok(db.remember_nonce(key).await?),
            None => Ok(true),
        }
    }

    /// Where webhooks may connect.
    pub fn egress(&self) -> &crate::egress::EgressPolicy {
        &self.shared.egress
    }

    /// Applies a heartbeat; `None` if the worker is not registered.
    pub async fn heartbeat(
        &self,
        worker_id: &str,
        hb: Option<&rxon::Heartbeat>,
    ) -> Result<Option<rxon::HeartbeatResponse>, EngineError> {
        if let Some(db) = &self.shared.db {
            return Ok(db.heartbeat(&self.shared, worker_id, hb).await?);
        }
        Ok(machine::heartbeat(
            &self.shared,
            &mut self.tx(),
            worker_id,
            hb,
        ))
    }

    /// The task channel of `worker_id` closed (the worker left, crashed or
    /// lost its connection): unless it is heard from again within
    /// [`EngineSettings::channel_grace`], it is gone and its tasks run
    /// elsewhere.
    pub async fn channel_lost(&self, worker_id: &str) {
        let grace = self.shared.settings.channel_grace;
        if let Some(db) = &self.shared.db {
            if let Err(e) = db.channel_lost(worker_id, grace).await {
                tracing::error!(
                    "cannot shorten the liveness of worker {worker_id} after its channel closed: {e}; it is dropped after its heartbeat bound instead"
                );
            }
            return;
        }
        machine::channel_lost(&mut self.tx(), worker_id, grace);
    }

    pub async fn workers(&self) -> Vec<WorkerView> {
        if let Some(db) = &self.shared.db {
            return db.worker_views().await.unwrap_or_else(|e| {
                tracing::error!("cannot read the workers: {e}");
                Vec::new()
            });
        }
        self.lock().workers.values().map(|w| w.view()).collect()
    }

    /// Queues, tasks held and workers now, for a metrics scrape.
    pub async fn metrics_snapshot(&self) -> crate::metrics::Snapshot {
        if let Some(db) = &self.shared.db {
            return db.metrics_snapshot().await.unwrap_or_else(|e| {
                tracing::error!("cannot read the queues for metrics: {e}");
                crate::metrics::Snapshot::default()
            });
        }
        let st = self.lock();
        let now = Utc::now();
        let queues = st
            .queues
            .iter()
            .map(|(task_type, queue)| {
                let oldest = queue.front().and_then(|q| {
                    let job = st.jobs.get(&q.job)?;
                    let task = job.tasks.iter().find(|t| t.task_id == q.task_id)?;
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

    /// Jobs held in memory (active ones plus the most recently ended).
    pub fn jobs_in_memory(&self) -> usize {
        self.lock().jobs.len()
    }

    pub fn is_registered(&self, worker_id: &str) -> bool {
        self.lock().workers.contains_key(worker_id)
    }

    /// Long-poll: the next task this worker can run, waiting up to `wait`.
    /// `Err` if the worker is not registered.
    pub async fn next_task(
        &self,
        worker_id: &str,
        wait: Duration,
    ) -> Result<Option<rxon::TaskPayload>, EngineError> {
        let deadline = Instant::now() + wait.min(self.shared.settings.max_poll_wait);
        // A deploy ends the wait: the answer carries the new plugins revision.
        let mut deploys = self.shared.registry.subscribe();
        deploys.borrow_and_update();
        if let Some(db) = &self.shared.db {
            loop {
                // Registered before looking, so a task queued meanwhile wakes it.
                let queued = db.tasks.notified();
                tokio::pin!(queued);
                queued.as_mut().enable();
                if let Some(payload) = db.take(&self.shared, worker_id).await? {
                    return Ok(Some(self.signed(payload)));
                }
                tokio::select! {
                    _ = queued => {}
                    _ = tokio::time::sleep_until(deadline) => return Ok(None),
                    _ = self.shared.stopping.cancelled() => return Ok(None),
                    _ = deploys.changed() => return Ok(None),
                }
            }
        }
        loop {
            let (taken, wake) = {
                let mut st = self.tx();
                let Some(worker) = st.workers.get_mut(worker_id) else {
                    return Err(EngineError::UnknownWorker(worker_id.to_string()));
                };
                worker.last_seen = Instant::now();
                let wake = worker.wake.clone();
                (machine::take_task(&self.shared, &mut st, worker_id), wake)
            };
            // Signed once the lock is released.
            if let Some(payload) = taken {
                return Ok(Some(self.signed(payload)));
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(None),
                _ = self.shared.stopping.cancelled() => return Ok(None),
                _ = deploys.changed() => return Ok(None),
            }
        }
    }

    /// The payload with its orchestrator signature, when a secret is set.
    fn signed(&self, mut payload: rxon::TaskPayload) -> rxon::TaskPayload {
        if let Some(secret) = &self.shared.settings.task_secret
            && let Ok(value) = serde_json::to_value(&payload)
        {
            payload.sig = Some(rxon::sign_task(&value, secret));
        }
        payload
    }

    pub async fn submit_result(
        &self,
        worker_id: &str,
        result: &rxon::TaskResult,
    ) -> Result<rxon::ResultResponse, EngineError> {
        if let Some(db) = &self.shared.db {
            return Ok(db.apply_result(&self.shared, worker_id, result).await?);
        }
        Ok(machine::apply_result(
            &self.shared,
            &mut self.tx(),
            worker_id,
            result,
        ))
    }

    /// A worker event; `progress` updates the job. `Err` names a forbidden target.
    pub async fn worker_event(
        &self,
        worker_id: &str,
        event: &rxon::WorkerEventPayload,
    ) -> Result<(), EngineError> {
        if let Some(db) = &self.shared.db {
            return db.worker_event(&self.shared, worker_id, event).await;
        }
        machine::worker_event(&mut self.tx(), worker_id, event)
    }

    async fn timer_loop(self) {
        loop {
            let next = self.lock().timers.first_key_value().map(|((at, _), _)| *at);
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                _ = self.shared.timer_wake.notified() => continue,
            }
            if Arc::strong_count(&self.shared) <= 1 {
                return;
            }
            let now = Instant::now();
            let mut st = self.tx();
            while let Some(entry) = st.timers.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let timer = entry.remove();
                machine::fire(&self.shared, &mut st, timer);
            }
        }
    }
}

/// The engine lock, held for one event. Whatever the event changed is sent
/// on when it is dropped, while the lock is still held (so writes keep
/// their order): the storage writes, the timer loop's wake-up, the
/// webhooks. Nothing to forget at the end of a handler.
pub(crate) struct Tx<'a> {
    engine: &'a Engine,
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
        self.engine.flush(&mut self.st);
    }
}

/// Helper to build a write for a changed job.
pub(crate) fn job_write(job: &mut Job, events: Vec<JobEvent>) -> JobWrite {
    job.version += 1;
    job.updated_at = Utc::now();
    JobWrite {
        job: job.clone(),
        events,
        webhook: None,
    }
}

/// What a history entry records; [`EventKind::as_str`] is its name in the
/// job history (`GET /jobs/{id}/history`) and in storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    TaskQueued,
    TaskDispatched,
    TaskRequeued,
    TaskResult,
    TaskFailed,
    RetryScheduled,
    RetriesExhausted,
    Transition,
    Progress,
    Recovered,
    Finished,
    Failed,
    Quarantined,
    Cancelled,
}

impl EventKind {
    pub const ALL: [EventKind; 15] = [
        Self::Created,
        Self::TaskQueued,
        Self::TaskDispatched,
        Self::TaskRequeued,
        Self::TaskResult,
        Self::TaskFailed,
        Self::RetryScheduled,
        Self::RetriesExhausted,
        Self::Transition,
        Self::Progress,
        Self::Recovered,
        Self::Finished,
        Self::Failed,
        Self::Quarantined,
        Self::Cancelled,
    ];

    /// The kind named `name` in a history entry.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::TaskQueued => "task_queued",
            Self::TaskDispatched => "task_dispatched",
            Self::TaskRequeued => "task_requeued",
            Self::TaskResult => "task_result",
            Self::TaskFailed => "task_failed",
            Self::RetryScheduled => "retry_scheduled",
            Self::RetriesExhausted => "retries_exhausted",
            Self::Transition => "transition",
            Self::Progress => "progress",
            Self::Recovered => "recovered",
            Self::Finished => "finished",
            Self::Failed => "failed",
            Self::Quarantined => "quarantined",
            Self::Cancelled => "cancelled",
        }
    }

    /// The entry of a job that ended with `status` other than `finished`.
    pub fn ended(status: JobStatus) -> Self {
        match status {
            JobStatus::Quarantined => Self::Quarantined,
            JobStatus::Cancelled => Self::Cancelled,
            JobStatus::Finished => Self::Finished,
            _ => Self::Failed,
        }
    }
}

/// A history entry; its text (which may quote what a worker sent) is cut
/// to [`MAX_EVENT_TEXT`] bytes.
pub(crate) fn event(kind: EventKind, message: impl Into<String>) -> JobEvent {
    let message: String = message.into();
    JobEvent {
        at: Utc::now(),
        event: kind.as_str().to_string(),
        message: rxon::text::clip(&message, MAX_EVENT_TEXT).into_owned(),
        task: None,
    }
}

/// A history entry about a task attempt (see [`crate::job::TaskRef`]).
pub(crate) fn task_event(
    kind: EventKind,
    message: impl Into<String>,
    task: crate::job::TaskRef,
) -> JobEvent {
    JobEvent {
        task: Some(task),
        ..event(kind, message)
    }
}

/// Longest text of one history entry.
pub const MAX_EVENT_TEXT: usize = 4096;
