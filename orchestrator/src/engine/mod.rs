//! The job engine: the state machine that moves jobs through their
//! blueprints, the task queues workers poll, worker liveness, and timers.
//!
//! - [`Engine`] (this file): the facade the API calls; each method one
//!   path, over the [`backend::Backend`].
//! - [`machine`]: what happens to a job on each event, the one place a
//!   job's status changes; it works on an [`EngineState`].
//! - [`backend`]: where that state lives: [`local`] (one instance, memory
//!   and the ordered writer [`persist`]) or [`shared_db`] (several
//!   instances on PostgreSQL).
//! - [`effects`]: what a committed event leaves to do, for both.
//! - [`state`], [`events`], [`settings`]: the working set, history entries
//!   and update-stream items, tunables.
//! - [`workers`]: the worker registry; [`webhook`]: end-of-job
//!   notifications; [`retention`]: ended jobs deleted after
//!   `finished_job_retention`; [`deploy`]: blueprints and plugins.
//!
//! Deadlines of one instance use tokio's monotonic [`Instant`] (so tests can
//! pause time); shared deadlines use the database's clock; wall-clock time
//! is only used for the timestamps people read and for checking signed
//! message timestamps.

mod backend;
pub mod deploy;
mod effects;
pub mod error;
mod events;
mod local;
pub(crate) mod machine;
pub mod matching;
pub mod persist;
pub mod rates;
pub mod retention;
mod settings;
pub(crate) mod shared_db;
mod skill_schemas;
mod state;
pub mod strategy;
pub mod webhook;
pub mod workers;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use crate::blueprint::{Blueprint, Catalog};
use crate::job::{Job, JobEvent, Object};
use crate::registry::PluginRegistry;
use crate::storage::{Deploys, JobFilter, Storage, StorageError};
use backend::Backend;
pub use error::EngineError;
pub use events::{EventKind, JobUpdate, MAX_EVENT_TEXT};
pub(crate) use events::{event, job_write, task_event};
pub use machine::{Signal, SignalAuth};
pub use settings::{
    DEFAULT_CHANNEL_GRACE_SECS, DEFAULT_IDEMPOTENCY_RETENTION_SECS,
    DEFAULT_MAX_ACTIVE_JOBS_PER_CLIENT, DEFAULT_MAX_JOB_DEPTH, DEFAULT_MAX_MAP_ITEMS,
    DEFAULT_MAX_MAP_RESULT_BYTES, DEFAULT_MAX_TRANSITIONS, DEFAULT_MAX_WORKER_TTL_SECS,
    DEFAULT_WEBHOOK_LEASE_SECS, EngineSettings, MAX_HEARTBEAT_TASKS, MAX_UPDATE_STREAMS,
    STOPS_BUFFER, TTL_MARGIN, UPDATES_BUFFER,
};
pub use state::{EngineState, Queued, TaskStop, Timer};
use workers::WorkerView;

pub(crate) struct Shared {
    /// Where jobs, queues, timers and workers live.
    pub backend: Backend,
    pub catalog: Arc<Catalog>,
    pub registry: Arc<PluginRegistry>,
    /// Every job change made here, for `GET /jobs/stream`.
    pub updates: tokio::sync::broadcast::Sender<JobUpdate>,
    /// Tasks to stop, for the workers' channels.
    pub stops: tokio::sync::broadcast::Sender<TaskStop>,
    /// One permit per open update stream.
    pub stream_permits: Arc<tokio::sync::Semaphore>,
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
    /// Compiled input schemas of the skills workers declare.
    pub skill_schemas: skill_schemas::SkillSchemas,
    /// Workers waiting for a task here, for the dispatch strategies.
    pub pollers: strategy::Pollers,
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

/// Where an engine keeps its jobs.
pub enum Store {
    /// One instance: memory or SQLite ([`Storage`]), behind the ordered
    /// writer.
    Local(Arc<dyn Storage>),
    /// Several instances on one PostgreSQL database (its URL): migrated at
    /// start, the source of truth for every instance on it.
    Postgres(String),
}

/// Handle to the engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub(crate) shared: Arc<Shared>,
}

/// Tries, and the pause between them, to see the job a held idempotency
/// key names (its create may be under way): 5 s in all.
const KEY_WAIT_TRIES: u32 = 50;
const KEY_WAIT_STEP: std::time::Duration = std::time::Duration::from_millis(100);

/// Options of a new job besides its data.
#[derive(Debug, Clone, Default)]
pub struct NewJob {
    pub blueprint: String,
    pub owner: String,
    pub initial_data: Object,
    pub webhook_url: Option<String>,
    pub dispatch_timeout: Option<f64>,
    pub result_timeout: Option<f64>,
    pub options: crate::job::JobOptions,
    /// Set for a child job (a parent's `run` state).
    pub parent: Option<crate::job::ParentRef>,
    /// Jobs its owner may have that have not ended (`None`: the server's
    /// `max_active_jobs_per_client`).
    pub max_active: Option<usize>,
    /// Its id (`None`: a new time-ordered one).
    pub id: Option<Uuid>,
    /// When it starts (`None` or past: at once); until then it is
    /// `scheduled`.
    pub start_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Parents above it.
    pub depth: u32,
}

impl Engine {
    /// Starts the engine over `store`: installs the blueprints, delivers
    /// webhooks owed from before, and starts the background loops.
    pub async fn start(
        blueprints: Vec<Blueprint>,
        store: Store,
        settings: EngineSettings,
    ) -> Result<Self, StorageError> {
        let backend = match store {
            Store::Postgres(url) => Backend::Shared(
                shared_db::SharedDb::connect(&url, settings.finished_jobs_in_memory).await?,
            ),
            Store::Local(storage) => {
                tracing::info!("storage: {}", storage.describe());
                Backend::Local(local::Local::new(storage, settings.finished_jobs_in_memory))
            }
        };
        let rows = backend.registry_rows().await?;
        let egress = Arc::new(crate::egress::EgressPolicy::new(
            &settings.webhook_allowed_hosts,
        ));
        let shared = Arc::new(Shared {
            backend,
            catalog: Arc::new(Catalog::default()),
            registry: Arc::new(PluginRegistry::from_rows(&rows, settings.max_plugin_bytes)),
            updates: tokio::sync::broadcast::Sender::new(UPDATES_BUFFER),
            stops: tokio::sync::broadcast::Sender::new(STOPS_BUFFER),
            stream_permits: Arc::new(tokio::sync::Semaphore::new(MAX_UPDATE_STREAMS)),
            webhook_clients: webhook::Lanes::new(settings.max_webhooks_per_client),
            webhook_hosts: webhook::Lanes::new(settings.max_webhooks_per_host),
            skill_schemas: Default::default(),
            pollers: Default::default(),
            webhook_permits: Arc::new(tokio::sync::Semaphore::new(
                settings.max_concurrent_webhooks.max(1),
            )),
            http: webhook::client(&egress)?,
            egress,
            settings,
            stopping: tokio_util::sync::CancellationToken::new(),
        });
        let engine = Self { shared };
        engine
            .install_blueprints(&rows.blueprints, blueprints)
            .await?;
        if let Some(keep) = engine.shared.settings.finished_job_retention {
            tokio::spawn(retention::run(engine.shared.clone(), keep));
        }
        tokio::spawn(retention::prune_keys(engine.shared.clone()));
        let pending = engine
            .shared
            .backend
            .pending_webhooks(&engine.shared)
            .await?;
        if !pending.is_empty() {
            tracing::info!(
                "delivering {} end-of-job webhook(s) still pending from before the start",
                pending.len()
            );
        }
        for pending in pending {
            let hook = webhook::Webhook::from_pending(pending);
            tokio::spawn(hook.deliver(engine.shared.clone()));
        }
        engine.shared.backend.start(&engine).await?;
        Ok(engine)
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

    /// Where deploys are stored.
    pub fn deploys(&self) -> &dyn Deploys {
        &self.shared.backend
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.shared.settings
    }

    /// Creates a job for `new.owner`'s idempotency key `key`: the job the
    /// key names if it was used within `idempotency_retention` (and `true`),
    /// else a new one. Racing creates with one key make one job, on every
    /// instance sharing the database.
    pub async fn create_job_once(
        &self,
        mut new: NewJob,
        key: &str,
    ) -> Result<(Uuid, bool), EngineError> {
        let keys: &dyn crate::storage::Keys = &self.shared.backend;
        let retention = chrono::Duration::from_std(self.shared.settings.idempotency_retention)
            .unwrap_or(chrono::Duration::days(1));
        let id = Uuid::now_v7();
        let owner = new.owner.clone();
        if let Some(held) = keys
            .claim_key(&owner, key, id, chrono::Utc::now() - retention)
            .await
            .map_err(|e| EngineError::Storage(e.to_string()))?
        {
            // Its create may still be under way: wait for the job a while.
            for _ in 0..KEY_WAIT_TRIES {
                let job = self.get_job(held.job).await;
                if job
                    .map_err(|e| EngineError::Storage(e.to_string()))?
                    .is_some()
                {
                    return Ok((held.job, true));
                }
                tokio::time::sleep(KEY_WAIT_STEP).await;
            }
            // Never created (its instance stopped, or its create failed
            // without giving the key back): the key is ours if still held
            // by that job.
            let taken = keys.replace_key(&owner, key, held.job, id).await;
            if !taken.map_err(|e| EngineError::Storage(e.to_string()))? {
                return Err(EngineError::Storage(format!(
                    "idempotency key {key:?} is being claimed by another create; try again"
                )));
            }
        }
        new.id = Some(id);
        match self.create_job(new).await {
            Ok(id) => Ok((id, false)),
            Err(e) => {
                if let Err(release) = keys.release_key(&owner, key, id).await {
                    tracing::warn!("cannot give idempotency key {key:?} back: {release}");
                }
                Err(e)
            }
        }
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
        if let Some(input) = &blueprint.contract.input {
            let data = serde_json::Value::Object(new.initial_data.clone());
            input.check(&data).map_err(|e| {
                EngineError::InvalidJob(format!(
                    "Input validation failed for blueprint '{}': {e}",
                    blueprint.name
                ))
            })?;
        }
        // Time-ordered (UUIDv7): jobs created together sit together in the
        // storage's indexes, so a batch of new jobs dirties a few pages
        // instead of one page per job.
        let id = new.id.unwrap_or_else(Uuid::now_v7);
        self.shared
            .backend
            .create(&self.shared, id, &blueprint, new)
            .await?;
        Ok(id)
    }

    /// Ends every waiting long-poll (with "no task") and refuses to wait in
    /// new ones, so a graceful shutdown is not held up by idle workers.
    pub fn begin_shutdown(&self) {
        self.shared.stopping.cancel();
    }

    /// Whether [`Engine::begin_shutdown`] was called.
    pub fn shutting_down(&self) -> bool {
        self.shared.stopping.is_cancelled()
    }

    /// Where schedules keep their progress (this engine's storage).
    pub fn schedule_store(&self) -> &dyn crate::storage::Schedules {
        &self.shared.backend
    }

    /// Waits until every change made so far is durable.
    pub async fn sync_storage(&self) {
        self.shared.backend.sync().await;
    }

    /// A job, from memory or storage.
    pub async fn get_job(&self, id: Uuid) -> Result<Option<Job>, StorageError> {
        self.shared.backend.get_job(id).await
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
        self.shared.backend.with_job_in_memory(id, f)
    }

    /// Waits up to `wait` for the job to reach a terminal status (or the
    /// server to stop).
    pub async fn wait_for_job(&self, id: Uuid, wait: Duration) {
        let deadline = Instant::now() + wait;
        while let Some(ended) = self.shared.backend.end_of(id).await {
            tokio::select! {
                _ = ended.wait() => {}
                _ = tokio::time::sleep_until(deadline) => return,
                _ = self.shared.stopping.cancelled() => return,
            }
        }
    }

    pub async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<Job>, StorageError> {
        self.shared.backend.list_jobs(filter).await
    }

    pub async fn job_events(&self, id: Uuid) -> Result<Vec<JobEvent>, StorageError> {
        self.shared.backend.job_events(id).await
    }

    /// One batch of retention: deletes up to `limit` finished, failed or
    /// cancelled jobs that last changed before `before`, with their history
    /// and webhooks; their ids (fewer than `limit`: no more are due; none
    /// while another instance on the same database runs a batch).
    pub async fn delete_ended(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<Uuid>, StorageError> {
        self.shared.backend.delete_ended(before, limit).await
    }

    /// A decision or signal for a job in a `wait` state: it goes on to the
    /// state the decision names; `Err` says why not.
    pub async fn signal_job(&self, signal: machine::Signal) -> Result<(), EngineError> {
        self.shared.backend.signal(&self.shared, signal).await
    }

    /// Cancels a job that has not ended; `Err` says why not.
    pub async fn cancel_job(&self, id: Uuid, owner: &str) -> Result<(), EngineError> {
        self.shared.backend.cancel(&self.shared, id, owner).await
    }

    /// Why a waiting job waits, e.g. no worker offers its task type.
    pub async fn waiting_reason(&self, job: &Job) -> Option<String> {
        // Most polled jobs are not waiting for a worker: their reason comes
        // from the job alone, without the worker list (lock or database).
        if !machine::waits_for_worker(job) {
            return machine::waiting_reason(&EngineState::default(), job);
        }
        self.shared.backend.waiting_reason(job).await
    }

    // ----- workers -----

    /// Registers a worker; `Err` when a new id would pass `max_workers`.
    pub async fn register_worker(&self, reg: &rxon::WorkerRegistration) -> Result<(), EngineError> {
        self.shared.backend.register(&self.shared, reg).await
    }

    /// Records a worker message's replay key; false when an instance
    /// sharing the database saw it already (one instance alone checks in
    /// memory, in [`crate::api::auth::Auth`]).
    pub async fn remember_nonce(&self, key: &str) -> Result<bool, EngineError> {
        self.shared.backend.remember_nonce(key).await
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
        self.shared
            .backend
            .heartbeat(&self.shared, worker_id, hb)
            .await
    }

    /// The task channel of `worker_id` closed (the worker left, crashed or
    /// lost its connection): unless it is heard from again within
    /// [`EngineSettings::channel_grace`], it is gone and its tasks run
    /// elsewhere.
    pub async fn channel_lost(&self, worker_id: &str) {
        let grace = self.shared.settings.channel_grace;
        if let Err(e) = self
            .shared
            .backend
            .channel_lost(&self.shared, worker_id, grace)
            .await
        {
            tracing::error!(
                "cannot shorten the liveness of worker {worker_id} after its channel closed: {e}; it is dropped after its heartbeat bound instead"
            );
        }
    }

    pub async fn workers(&self) -> Vec<WorkerView> {
        self.shared.backend.workers().await.unwrap_or_else(|e| {
            tracing::error!("cannot read the workers: {e}");
            Vec::new()
        })
    }

    /// Queues, tasks held and workers now, for a metrics scrape.
    pub async fn metrics_snapshot(&self) -> crate::metrics::Snapshot {
        self.shared
            .backend
            .metrics_snapshot()
            .await
            .unwrap_or_else(|e| {
                tracing::error!("cannot read the queues for metrics: {e}");
                crate::metrics::Snapshot::default()
            })
    }

    /// Long-poll: the next task this worker can run, waiting up to `wait`.
    /// `Err` if the worker is not registered.
    pub async fn next_task(
        &self,
        worker_id: &str,
        wait: Duration,
    ) -> Result<Option<rxon::TaskPayload>, EngineError> {
        self.next_task_hot(worker_id, wait, None).await
    }

    /// [`Self::next_task`] for a poll naming the skills the worker holds
    /// warm (`hot_skills`, for the `default` dispatch strategy).
    pub async fn next_task_hot(
        &self,
        worker_id: &str,
        wait: Duration,
        hot: Option<strategy::Hot>,
    ) -> Result<Option<rxon::TaskPayload>, EngineError> {
        let deadline = Instant::now() + wait.min(self.shared.settings.max_poll_wait);
        if let Some(hot) = hot {
            self.shared.pollers.set_hot(worker_id, hot);
        }
        // A deploy ends the wait: the answer carries the new plugins revision.
        let mut deploys = self.shared.registry.subscribe();
        deploys.borrow_and_update();
        // Waiting here, for the strategies, from its first take that found
        // nothing until it returns; woken through `chosen` when a task its
        // strategy prefers it for is left to it.
        let mut waiting = None;
        let mut chosen: Option<Arc<tokio::sync::Notify>> = None;
        loop {
            let take = self.shared.backend.take(&self.shared, worker_id).await?;
            // Signed outside any lock.
            if let Some(payload) = take.task {
                return Ok(Some(self.signed(payload)));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            if let (Some(standing), None) = (take.standing, &waiting) {
                let wake = Arc::new(tokio::sync::Notify::new());
                waiting = Some(self.shared.pollers.wait(worker_id, standing, wake.clone()));
                chosen = Some(wake);
            }
            // A task held back by its rate key or left to another worker
            // may be this one's before the deadline.
            let again = take.again_at.filter(|at| *at < deadline);
            tokio::select! {
                _ = take.wake.wait() => {}
                _ = async {
                    match &chosen {
                        Some(c) => c.notified().await,
                        None => std::future::pending().await,
                    }
                } => {}
                _ = tokio::time::sleep_until(again.unwrap_or(deadline)), if again.is_some() => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(None),
                _ = self.shared.stopping.cancelled() => return Ok(None),
                _ = deploys.changed() => return Ok(None),
            }
        }
    }

    /// Adds clients' usage counts (their monthly quotas); the totals after,
    /// every instance's.
    pub async fn add_usage(
        &self,
        deltas: Vec<(crate::storage::UsageKey, u64)>,
    ) -> Result<Vec<(crate::storage::UsageKey, u64)>, EngineError> {
        self.shared
            .backend
            .add_usage(deltas)
            .await
            .map_err(|e| EngineError::Storage(e.to_string()))
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
        result: rxon::TaskResult,
    ) -> Result<rxon::ResultResponse, EngineError> {
        self.shared
            .backend
            .apply_result(&self.shared, worker_id, result)
            .await
    }

    /// A worker event; `progress` updates the job. `Err` names a forbidden target.
    pub async fn worker_event(
        &self,
        worker_id: &str,
        event: &rxon::WorkerEventPayload,
    ) -> Result<(), EngineError> {
        self.shared
            .backend
            .worker_event(&self.shared, worker_id, event)
            .await
    }
}
