//! What the engine can be tuned with, and the bounds it keeps.

use std::time::Duration;

/// State changes a job may take unless configured (avtomatika's
/// `MAX_TRANSITIONS_PER_JOB`).
pub const DEFAULT_MAX_TRANSITIONS: u32 = 100;

/// Default of [`EngineSettings::idempotency_retention`]: a day.
pub const DEFAULT_IDEMPOTENCY_RETENTION_SECS: u64 = 86_400;
/// Default of [`EngineSettings::max_job_depth`].
pub const DEFAULT_MAX_JOB_DEPTH: u32 = 10;
/// Default of [`EngineSettings::max_map_items`].
pub const DEFAULT_MAX_MAP_ITEMS: usize = 10_000;
/// Default of [`EngineSettings::max_map_result_bytes`] (64 MiB).
pub const DEFAULT_MAX_MAP_RESULT_BYTES: u64 = 64 << 20;

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
    /// Most elements a `map` state's list may have (longer fails the job
    /// with `MAP_LIMIT_EXCEEDED`).
    pub max_map_items: usize,
    /// Most bytes of results a `map` state gathers (its elements' results
    /// as JSON, together); past it the job fails with `MAP_LIMIT_EXCEEDED`.
    pub max_map_result_bytes: u64,
    /// How long a create's idempotency key names its job.
    pub idempotency_retention: Duration,
    /// Most levels of child jobs under a job a client created (a `run`
    /// deeper fails its job with `DEPTH_LIMIT_EXCEEDED`).
    pub max_job_depth: u32,
    /// Largest plugin component accepted by the registry.
    pub max_plugin_bytes: usize,
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
    /// this are deleted with their history ([`super::retention`]); `None`: kept.
    pub finished_job_retention: Option<Duration>,
    /// Per client with a plan or parameters: `{plan, params}`, for the
    /// `client` of blueprint expressions.
    pub clients: std::sync::Arc<std::collections::HashMap<String, serde_json::Value>>,
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
            max_transitions: DEFAULT_MAX_TRANSITIONS,
            max_map_items: DEFAULT_MAX_MAP_ITEMS,
            max_job_depth: DEFAULT_MAX_JOB_DEPTH,
            idempotency_retention: Duration::from_secs(DEFAULT_IDEMPOTENCY_RETENTION_SECS),
            max_map_result_bytes: DEFAULT_MAX_MAP_RESULT_BYTES,
            sweep_interval: Duration::from_secs(1),
            channel_grace: Duration::from_secs(DEFAULT_CHANNEL_GRACE_SECS),
            max_plugin_bytes: crate::registry::DEFAULT_MAX_PLUGIN_BYTES,
            finished_jobs_in_memory: 10_000,
            finished_job_retention: None,
            webhook_lease: Duration::from_secs(DEFAULT_WEBHOOK_LEASE_SECS),
            clients: Default::default(),
        }
    }
}

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

/// Most task ids a heartbeat may list; more is refused (400).
pub const MAX_HEARTBEAT_TASKS: usize = 10_000;

/// Added to two heartbeat intervals to make a worker's time to live.
pub const TTL_MARGIN: Duration = Duration::from_secs(5);

/// Stop notices buffered for slow channel sessions (a session that lags
/// behind loses some; its worker's next heartbeat still learns of them).
pub const STOPS_BUFFER: usize = 1024;
