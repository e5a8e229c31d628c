//! Configuration: an optional TOML file, overridden by CLI flags and
//! environment variables.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! storage = "sqlite:data/orchestrator.db"   # or "postgres://user@host/db", or "memory"
//! blueprints_dir = "blueprints"
//! log_format = "text"                        # or "json"
//! global_worker_token = "test-worker-token"
//! max_body_bytes = 1048576
//! worker_ttl_seconds = 35                  # workers that do not declare their heartbeat interval
//! channel_grace_seconds = 3                # a worker whose task channel closed is gone after this
//! default_result_timeout_seconds = 3600    # lease of a task with no result_timeout of its own
//! require_signatures = true
//! orchestrator_secret_key = "…"            # signs tasks (`sig`); or ORCHESTRATOR_SECRET_KEY
//! max_connections = 1024
//! header_read_timeout_seconds = 20         # most time a connection may spend with no request in flight
//! body_read_timeout_seconds = 60           # most time a request body may take to arrive (then 408)
//! max_workers = 1000
//! max_active_jobs_per_client = 10000       # jobs one client may have that have not ended (then 429)
//! max_transitions_per_job = 100            # state changes a job may take (a runaway loop fails); a create's `max_transitions` may lower it
//! max_job_depth = 10                      # levels of child jobs (`run`) under a client's job (deeper fails: DEPTH_LIMIT_EXCEEDED)
//! max_map_items = 10000                    # elements a `map` state's list may have (more fails the job: MAP_LIMIT_EXCEEDED)
//! max_map_result_bytes = 67108864          # bytes of results one `map` state gathers (more fails the job: MAP_LIMIT_EXCEEDED)
//! max_workers_per_token = 256              # worker ids one global or pattern token may register
//! max_worker_ttl_seconds = 300             # longest liveness a worker's declared heartbeat interval earns
//! max_skills_per_worker = 1024
//! webhook_allowed_hosts = ["127.0.0.1", "10.0.0.0/8", "hooks.internal"]
//! max_concurrent_webhooks = 64
//! max_webhooks_per_client = 16             # webhook requests in flight for one client's jobs
//! max_webhooks_per_host = 16               # webhook requests in flight to one target host
//! auth_failures_per_minute = 30            # wrong tokens per peer address, then 429 (0: no limit)
//! trusted_proxies = ["127.0.0.1"]          # their X-Forwarded-For names the peer (for the line above)
//!
//! webhook_lease_seconds = 120              # PostgreSQL: a webhook owed by a stopped instance is delivered by another after this
//! idempotency_retention = "24h"            # a create's Idempotency-Key names its job this long
//! finished_job_retention = "7d"            # ended jobs older than this are deleted ("0": keep all)
//!
//! schedules_file = "schedules.toml"        # avtomatika's schedules (or --schedules, SCHEDULES_CONFIG_PATH)
//! schedule_timezone = "UTC"                # zone of schedules that name none
//! schedule_client = "default"              # client scheduled jobs belong to, unless a schedule names one
//!
//! max_plugin_bytes = 67108864              # largest plugin component uploaded
//! runtime_threads = 2                       # async runtime threads [default: one per core]
//!
//! [objects]                                # jobs' files: see orchestrator/src/objects/config.rs
//! endpoint = "http://127.0.0.1:9000"       # an S3-compatible service (default: the directory data/objects)
//!
//! [clients.default]
//! token = "test-client-token"
//!
//! [clients.ci]
//! token = "deploy-token"
//! deploy = true                            # may upload plugins and blueprints
//!
//! [clients.acme]
//! token = "acme-token"
//! plan = "free"                            # the plan's limits; its own keys below win
//! max_active_jobs = 50
//!
//! [plans.free]
//! requests_per_second = 5                  # per instance; past it 429 with Retry-After
//! burst = 10                               # default: twice the rate
//! max_active_jobs = 100                    # instead of max_active_jobs_per_client
//! monthly_attempts = 100000                # API requests a calendar month (UTC)
//! monthly_jobs = 10000                     # jobs created a calendar month
//!
//! [workers.local-test-worker]
//! token = "its-own-token"
//!
//! [workers."pattern:gpu-*"]                # every worker id the glob matches
//! token = "the-gpu-fleet-token"
//! ```
//!
//! Worker tokens may also come from avtomatika's `workers.toml`
//! (`--workers-config`, `WORKERS_CONFIG_PATH`): the same `[<id>]` and
//! `["pattern:<glob>"]` tables at the top level.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Parser;
use serde::Deserialize;

#[derive(Debug, Parser)]
#[command(
    name = "orchestrator",
    version,
    about = "Runs jobs through declarative blueprints and hands tasks to RXON workers"
)]
pub struct Cli {
    /// Configuration file (TOML).
    #[arg(long, short, env = "ORCHESTRATOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "LISTEN_ADDR")]
    pub listen: Option<SocketAddr>,
    /// `sqlite:<path>`, `postgres://user@host/db` or `memory`
    /// [default: sqlite:data/orchestrator.db].
    #[arg(long, env = "STORAGE")]
    pub storage: Option<String>,
    /// Directory of blueprint files (`*.toml`) [default: blueprints].
    #[arg(long, env = "BLUEPRINTS_DIR")]
    pub blueprints_dir: Option<PathBuf>,
    /// A client token (repeatable); its client is named `default`.
    #[arg(
        long = "client-token",
        env = "CLIENT_TOKEN",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub client_tokens: Vec<String>,
    /// A client token that may also deploy plugins and blueprints (its
    /// client is named `deployer`).
    #[arg(long, env = "DEPLOY_TOKEN", hide_env_values = true)]
    pub deploy_token: Option<String>,
    /// Token any worker without its own may use.
    #[arg(long, env = "GLOBAL_WORKER_TOKEN", hide_env_values = true)]
    pub worker_token: Option<String>,
    /// avtomatika's `workers.toml`: `[<worker_id>] token = "…"` per worker,
    /// and `["pattern:<glob>"] token = "…"` for the ids a glob matches.
    #[arg(long, env = "WORKERS_CONFIG_PATH")]
    pub workers_config: Option<PathBuf>,
    /// avtomatika's `clients.toml`: `[<name>] token = "…"` per client, with
    /// an optional `plan`, `monthly_attempts` and parameters of its own.
    #[arg(long, env = "CLIENTS_CONFIG_PATH")]
    pub clients_config: Option<PathBuf>,
    /// avtomatika's `schedules.toml`: jobs started at set times (see
    /// docs/guide/schedules.md).
    #[arg(long = "schedules", env = "SCHEDULES_CONFIG_PATH")]
    pub schedules_file: Option<PathBuf>,
    /// `text` or `json` [default: text].
    #[arg(long, env = "LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Secret that signs every task handed out (`sig`, HMAC-SHA256), as
    /// avtomatika does; workers given the same secret verify it.
    #[arg(long, env = "ORCHESTRATOR_SECRET_KEY", hide_env_values = true)]
    pub orchestrator_secret: Option<String>,
    /// Finished, failed and cancelled jobs older than this are deleted with
    /// their history (`7d`, `12h`, `90m`; `0` keeps every job) [default: 7d].
    #[arg(long, env = "FINISHED_JOB_RETENTION")]
    pub finished_job_retention: Option<String>,
    /// Threads of the async runtime (1-1024) [default: one per core]. On a
    /// machine shared with workers or clients, fewer threads cost less CPU
    /// per job (`scripts/bench-compare.sh` runs with `THREADS=1`).
    #[arg(long, env = "RUNTIME_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub runtime_threads: Option<u16>,
    /// Where jobs' files are kept (see `[objects]`).
    #[command(flatten)]
    pub objects: crate::objects::config::ObjectsArgs,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    storage: Option<String>,
    blueprints_dir: Option<PathBuf>,
    log_format: Option<String>,
    global_worker_token: Option<String>,
    max_body_bytes: Option<usize>,
    worker_ttl_seconds: Option<f64>,
    channel_grace_seconds: Option<f64>,
    default_result_timeout_seconds: Option<f64>,
    require_signatures: Option<bool>,
    max_connections: Option<usize>,
    header_read_timeout_seconds: Option<f64>,
    body_read_timeout_seconds: Option<f64>,
    max_workers: Option<usize>,
    max_workers_per_token: Option<usize>,
    max_active_jobs_per_client: Option<usize>,
    max_transitions_per_job: Option<usize>,
    max_map_items: Option<usize>,
    max_job_depth: Option<usize>,
    max_map_result_bytes: Option<usize>,
    max_worker_ttl_seconds: Option<f64>,
    workers_config: Option<PathBuf>,
    clients_config: Option<PathBuf>,
    schedules_file: Option<PathBuf>,
    idempotency_retention: Option<String>,
    schedule_timezone: Option<String>,
    schedule_client: Option<String>,
    max_skills_per_worker: Option<usize>,
    #[serde(default)]
    webhook_allowed_hosts: Vec<String>,
    max_concurrent_webhooks: Option<usize>,
    max_webhooks_per_client: Option<usize>,
    max_webhooks_per_host: Option<usize>,
    auth_failures_per_minute: Option<usize>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    max_plugin_bytes: Option<usize>,
    finished_job_retention: Option<Retention>,
    webhook_lease_seconds: Option<f64>,
    runtime_threads: Option<usize>,
    orchestrator_secret_key: Option<String>,
    #[serde(default)]
    clients: BTreeMap<String, TokenEntry>,
    #[serde(default)]
    workers: BTreeMap<String, TokenEntry>,
    #[serde(default)]
    plans: BTreeMap<String, PlanEntry>,
    #[serde(default)]
    objects: crate::objects::config::ObjectsFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    token: String,
    /// Clients only: may deploy plugins and blueprints.
    #[serde(default)]
    deploy: bool,
    /// Clients only: a `[plans.<name>]` whose limits apply (its own keys
    /// below win).
    #[serde(default)]
    plan: Option<String>,
    /// Clients only: its own limits (see [`PlanEntry`]).
    #[serde(default)]
    requests_per_second: Option<f64>,
    #[serde(default)]
    burst: Option<u32>,
    #[serde(default)]
    max_active_jobs: Option<usize>,
    #[serde(default)]
    monthly_attempts: Option<u64>,
    #[serde(default)]
    monthly_jobs: Option<u64>,
    /// Clients only: parameters blueprints read as `client.params`.
    #[serde(default)]
    params: Option<toml::Table>,
    /// From avtomatika's `clients.toml`, where a plan is a label (it need
    /// not name a `[plans.<name>]`).
    #[serde(skip)]
    plan_is_label: bool,
}

/// Limits of a plan, or of one client.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanEntry {
    /// Requests per second (each instance counts its own).
    #[serde(default)]
    requests_per_second: Option<f64>,
    /// Requests above the rate allowed at once [default: 2 × the rate, at least 1].
    #[serde(default)]
    burst: Option<u32>,
    /// Jobs that have not ended (instead of `max_active_jobs_per_client`).
    #[serde(default)]
    max_active_jobs: Option<usize>,
    /// API requests per calendar month (UTC), avtomatika's quota.
    #[serde(default)]
    monthly_attempts: Option<u64>,
    /// Jobs created per calendar month (UTC).
    #[serde(default)]
    monthly_jobs: Option<u64>,
}

/// Where jobs are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageConfig {
    Memory,
    Sqlite(PathBuf),
    /// A `postgres://` (or `postgresql://`) URL.
    Postgres(String),
}

impl std::str::FromStr for StorageConfig {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "memory" => Ok(Self::Memory),
            _ if s.starts_with("postgres://") || s.starts_with("postgresql://") => {
                Ok(Self::Postgres(s.to_string()))
            }
            _ => match s.strip_prefix("sqlite:") {
                Some(path) if !path.is_empty() => Ok(Self::Sqlite(PathBuf::from(path))),
                _ => {
                    bail!("storage must be `memory`, `sqlite:<path>` or `postgres://…`, not {s:?}")
                }
            },
        }
    }
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub storage: StorageConfig,
    pub blueprints_dir: PathBuf,
    pub json_logs: bool,
    /// Client token → client name.
    pub clients: HashMap<String, String>,
    /// How long an idempotency key names its job.
    pub idempotency_retention: std::time::Duration,
    /// The schedules of the schedules file (none without one).
    pub schedules: Vec<crate::schedule::Schedule>,
    /// Zone of schedules that name none (the file's and deployed ones).
    pub schedule_timezone: chrono_tz::Tz,
    /// Names of the clients that may deploy.
    pub deployers: std::collections::HashSet<String>,
    /// Client name → its rate and bounds (clients with any).
    pub client_limits: HashMap<String, crate::api::limits::ClientLimits>,
    /// Per client with a plan or parameters: `{plan, params}`, which
    /// blueprints read as `client.plan` and `client.params`.
    pub client_info: HashMap<String, serde_json::Value>,
    /// Largest plugin component accepted.
    pub max_plugin_bytes: usize,
    pub global_worker_token: Option<String>,
    pub worker_tokens: HashMap<String, String>,
    pub max_body_bytes: usize,
    /// Liveness of a worker that does not declare its heartbeat interval.
    pub worker_ttl: std::time::Duration,
    /// A worker whose task channel closed is gone after this unless heard from.
    pub channel_grace: std::time::Duration,
    /// Lease of a handed-out task without a result timeout of its own.
    pub default_result_timeout: std::time::Duration,
    pub require_signatures: bool,
    /// Signs handed-out tasks when set.
    pub orchestrator_secret: Option<String>,
    /// Connection cap and timeouts of the HTTP server.
    pub serve: crate::api::ServeLimits,
    /// Most registered workers, and most skills one may declare.
    pub max_workers: usize,
    pub max_skills_per_worker: usize,
    /// Most worker ids one shared token (global or pattern) may register.
    pub max_workers_per_token: usize,
    /// Most jobs one client may have that have not ended.
    pub max_active_jobs_per_client: usize,
    /// Most state changes one job may take.
    pub max_transitions_per_job: u32,
    /// Most levels of child jobs.
    pub max_job_depth: u32,
    /// Most elements of a `map` state's list.
    pub max_map_items: usize,
    /// Most bytes of results one `map` state gathers.
    pub max_map_result_bytes: u64,
    /// Longest liveness a worker's declared heartbeat interval earns.
    pub max_worker_ttl: std::time::Duration,
    /// Webhook egress: hosts or addresses (`127.0.0.1`, `10.0.0.0/8`,
    /// `hooks.internal`) allowed although private, and the delivery cap.
    pub webhook_allowed_hosts: Vec<String>,
    pub max_concurrent_webhooks: usize,
    /// Webhook requests in flight per client and per target host.
    pub max_webhooks_per_client: usize,
    pub max_webhooks_per_host: usize,
    /// Wrong credentials allowed per peer address and minute (0: no limit).
    pub auth_failures_per_minute: u32,
    /// Proxies whose `X-Forwarded-For` names the peer for that limit.
    pub trusted_proxies: crate::api::throttle::TrustedProxies,
    /// PostgreSQL: how long a webhook's delivering instance may go without
    /// renewing it before another takes it over.
    pub webhook_lease: std::time::Duration,
    /// Ended jobs older than this are deleted; `None`: kept for ever.
    pub finished_job_retention: Option<std::time::Duration>,
    /// Threads of the async runtime; `None`: one per core.
    pub runtime_threads: Option<usize>,
    /// Where jobs' files are kept.
    pub objects: crate::objects::ObjectsConfig,
}

/// Default of `finished_job_retention`: a week.
pub const DEFAULT_RETENTION: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

/// `finished_job_retention` as written: `"7d"` or a number of seconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Retention {
    Seconds(u64),
    Text(String),
}

/// A retention: `0` keeps all (`None`), else a duration such as `7d`.
fn retention(text: &str) -> anyhow::Result<Option<std::time::Duration>> {
    let text = text.trim();
    if text == "0" {
        return Ok(None);
    }
    let keep = humantime::parse_duration(text).with_context(|| {
        format!("finished_job_retention must be a duration such as `7d`, `12h` or `90s`, or `0` to keep every job, not {text:?}")
    })?;
    Ok((!keep.is_zero()).then_some(keep))
}

/// Default liveness of a worker that does not declare its heartbeat
/// interval: two of the SDK's 15 s intervals plus a 5 s margin.
pub const DEFAULT_WORKER_TTL_SECS: f64 = 35.0;
/// Default lease of a task without a result timeout: an hour.
pub const DEFAULT_RESULT_TIMEOUT_SECS: f64 = 3600.0;

impl Config {
    pub fn resolve(cli: Cli) -> anyhow::Result<Self> {
        let mut file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let log_format = cli
            .log_format
            .or(file.log_format)
            .unwrap_or_else(|| "text".into());
        if log_format != "text" && log_format != "json" {
            bail!("log format must be `text` or `json`, not {log_format:?}");
        }
        let storage = cli
            .storage
            .or(file.storage)
            .unwrap_or_else(|| "sqlite:data/orchestrator.db".into())
            .parse()?;
        let mut deployers: std::collections::HashSet<String> = file
            .clients
            .iter()
            .filter(|(_, entry)| entry.deploy)
            .map(|(name, _)| name.clone())
            .collect();
        if let Some(path) = cli.clients_config.or(file.clients_config.take()) {
            for (name, entry) in load_clients_toml(&path)? {
                if file.clients.contains_key(&name) {
                    bail!(
                        "client {name} is both in the config file and in {}",
                        path.display()
                    );
                }
                file.clients.insert(name, entry);
            }
        }
        let client_limits = resolve_limits(&file.clients, &file.plans)?;
        let client_info = file
            .clients
            .iter()
            .filter(|(_, e)| e.plan.is_some() || e.params.is_some())
            .map(|(name, e)| {
                let params = e
                    .params
                    .as_ref()
                    .and_then(|p| serde_json::to_value(p).ok())
                    .unwrap_or_else(|| serde_json::json!({}));
                (
                    name.clone(),
                    serde_json::json!({"plan": e.plan, "params": params}),
                )
            })
            .collect();
        let mut clients: HashMap<String, String> = file
            .clients
            .into_iter()
            .map(|(name, entry)| (entry.token, name))
            .collect();
        if let Some(token) = cli.deploy_token.filter(|t| !t.is_empty()) {
            clients.insert(token, "deployer".into());
            deployers.insert("deployer".into());
        }
        for token in cli.client_tokens.into_iter().filter(|t| !t.is_empty()) {
            clients.insert(token, "default".into());
        }
        if clients.is_empty() {
            bail!(
                "no client token configured: set CLIENT_TOKEN, pass --client-token, or add [clients.<name>] to the config file"
            );
        }
        let global_worker_token = cli
            .worker_token
            .or(file.global_worker_token)
            .filter(|t| !t.is_empty());
        let mut worker_tokens: HashMap<String, String> = file
            .workers
            .into_iter()
            .map(|(id, entry)| (id, entry.token))
            .collect();
        if let Some(path) = cli.workers_config.or(file.workers_config) {
            worker_tokens.extend(load_workers_toml(&path)?);
        }
        let idempotency_retention = match &file.idempotency_retention {
            None => std::time::Duration::from_secs(crate::engine::DEFAULT_IDEMPOTENCY_RETENTION_SECS),
            Some(text) => humantime::parse_duration(text.trim())
                .ok()
                .filter(|d| !d.is_zero() && d.as_secs() <= 30 * 86_400)
                .with_context(|| {
                    format!("idempotency_retention must be a duration from 1s to 30d, such as `24h`, not {text:?}")
                })?,
        };
        let schedule_timezone: chrono_tz::Tz = {
            let zone = file.schedule_timezone.as_deref().unwrap_or("UTC");
            zone.parse()
                .map_err(|_| anyhow::anyhow!("schedule_timezone {zone:?} is not a known zone"))?
        };
        let schedules = match cli.schedules_file.or(file.schedules_file) {
            None => Vec::new(),
            Some(path) => {
                let zone = schedule_timezone;
                let client = file.schedule_client.as_deref().unwrap_or("default");
                let text = std::fs::read_to_string(&path).with_context(|| {
                    format!("cannot read the schedules file {}", path.display())
                })?;
                crate::schedule::model::parse(&path.display().to_string(), &text, zone, client)?
            }
        };
        for key in worker_tokens.keys() {
            if let Some(glob) = key.strip_prefix(crate::api::auth::WORKER_PATTERN) {
                glob::Pattern::new(glob).with_context(|| {
                    format!("worker token entry {key:?}: {glob:?} is not a valid pattern")
                })?;
            }
        }
        if global_worker_token.is_none() && worker_tokens.is_empty() {
            bail!(
                "no worker token configured: set GLOBAL_WORKER_TOKEN, pass --worker-token, or add [workers.<id>] to the config file"
            );
        }
        let ttl = crate::secs::timeout(
            "worker_ttl_seconds",
            file.worker_ttl_seconds.unwrap_or(DEFAULT_WORKER_TTL_SECS),
        )?;
        Ok(Self {
            listen: cli
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            storage,
            blueprints_dir: cli
                .blueprints_dir
                .or(file.blueprints_dir)
                .unwrap_or_else(|| "blueprints".into()),
            json_logs: log_format == "json",
            clients,
            deployers,
            client_limits,
            client_info,
            schedule_timezone,
            schedules,
            idempotency_retention,
            max_plugin_bytes: bounded(
                "max_plugin_bytes",
                file.max_plugin_bytes,
                crate::registry::DEFAULT_MAX_PLUGIN_BYTES,
                1024..=(1 << 30),
            )?,
            global_worker_token,
            worker_tokens,
            max_body_bytes: file.max_body_bytes.unwrap_or(crate::api::DEFAULT_MAX_BODY),
            worker_ttl: ttl,
            channel_grace: crate::secs::timeout(
                "channel_grace_seconds",
                file.channel_grace_seconds
                    .unwrap_or(crate::engine::DEFAULT_CHANNEL_GRACE_SECS as f64),
            )?,
            default_result_timeout: crate::secs::timeout(
                "default_result_timeout_seconds",
                file.default_result_timeout_seconds
                    .unwrap_or(DEFAULT_RESULT_TIMEOUT_SECS),
            )?,
            require_signatures: file.require_signatures.unwrap_or(true),
            orchestrator_secret: cli
                .orchestrator_secret
                .or(file.orchestrator_secret_key)
                .filter(|s| !s.is_empty()),
            serve: crate::api::ServeLimits {
                max_connections: bounded(
                    "max_connections",
                    file.max_connections,
                    1024,
                    1..=1_000_000,
                )?,
                header_read_timeout: crate::secs::timeout(
                    "header_read_timeout_seconds",
                    file.header_read_timeout_seconds.unwrap_or(20.0),
                )?,
                body_read_timeout: crate::secs::timeout(
                    "body_read_timeout_seconds",
                    file.body_read_timeout_seconds.unwrap_or(60.0),
                )?,
                ..crate::api::ServeLimits::default()
            },
            max_workers: bounded("max_workers", file.max_workers, 1000, 1..=1_000_000)?,
            max_workers_per_token: bounded(
                "max_workers_per_token",
                file.max_workers_per_token,
                DEFAULT_MAX_WORKERS_PER_TOKEN,
                1..=1_000_000,
            )?,
            max_active_jobs_per_client: bounded(
                "max_active_jobs_per_client",
                file.max_active_jobs_per_client,
                crate::engine::DEFAULT_MAX_ACTIVE_JOBS_PER_CLIENT,
                1..=100_000_000,
            )?,
            max_transitions_per_job: bounded(
                "max_transitions_per_job",
                file.max_transitions_per_job,
                crate::engine::DEFAULT_MAX_TRANSITIONS as usize,
                1..=1_000_000,
            )? as u32,
            max_job_depth: bounded(
                "max_job_depth",
                file.max_job_depth,
                crate::engine::DEFAULT_MAX_JOB_DEPTH as usize,
                1..=100,
            )? as u32,
            max_map_items: bounded(
                "max_map_items",
                file.max_map_items,
                crate::engine::DEFAULT_MAX_MAP_ITEMS,
                1..=1_000_000,
            )?,
            max_map_result_bytes: bounded(
                "max_map_result_bytes",
                file.max_map_result_bytes,
                crate::engine::DEFAULT_MAX_MAP_RESULT_BYTES as usize,
                1024..=(16 << 30),
            )? as u64,
            max_worker_ttl: crate::secs::timeout(
                "max_worker_ttl_seconds",
                file.max_worker_ttl_seconds
                    .unwrap_or(crate::engine::DEFAULT_MAX_WORKER_TTL_SECS as f64),
            )?,
            max_skills_per_worker: bounded(
                "max_skills_per_worker",
                file.max_skills_per_worker,
                1024,
                1..=100_000,
            )?,
            webhook_allowed_hosts: file.webhook_allowed_hosts,
            max_concurrent_webhooks: bounded(
                "max_concurrent_webhooks",
                file.max_concurrent_webhooks,
                64,
                1..=10_000,
            )?,
            max_webhooks_per_client: bounded(
                "max_webhooks_per_client",
                file.max_webhooks_per_client,
                16,
                1..=10_000,
            )?,
            max_webhooks_per_host: bounded(
                "max_webhooks_per_host",
                file.max_webhooks_per_host,
                16,
                1..=10_000,
            )?,
            auth_failures_per_minute: bounded(
                "auth_failures_per_minute",
                file.auth_failures_per_minute,
                crate::api::throttle::DEFAULT_LIMIT as usize,
                0..=1_000_000,
            )? as u32,
            trusted_proxies: crate::api::throttle::TrustedProxies::parse(&file.trusted_proxies)
                .map_err(anyhow::Error::msg)?,
            webhook_lease: crate::secs::timeout(
                "webhook_lease_seconds",
                file.webhook_lease_seconds
                    .unwrap_or(crate::engine::DEFAULT_WEBHOOK_LEASE_SECS as f64),
            )?,
            finished_job_retention: match (cli.finished_job_retention, file.finished_job_retention)
            {
                (Some(text), _) | (None, Some(Retention::Text(text))) => retention(&text)?,
                (None, Some(Retention::Seconds(0))) => None,
                (None, Some(Retention::Seconds(secs))) => {
                    Some(std::time::Duration::from_secs(secs))
                }
                (None, None) => Some(DEFAULT_RETENTION),
            },
            runtime_threads: match cli
                .runtime_threads
                .map(usize::from)
                .or(file.runtime_threads)
            {
                Some(n) => Some(bounded("runtime_threads", Some(n), n, 1..=1024)?),
                None => None,
            },
            objects: crate::objects::config::resolve(cli.objects, file.objects)?,
        })
    }
}

/// A count from the config file, within `range`.
/// Each client's limits: its own keys over its plan's.
fn resolve_limits(
    clients: &BTreeMap<String, TokenEntry>,
    plans: &BTreeMap<String, PlanEntry>,
) -> anyhow::Result<HashMap<String, crate::api::limits::ClientLimits>> {
    let mut out = HashMap::new();
    for (name, entry) in clients {
        let plan = match &entry.plan {
            None => PlanEntry::default(),
            Some(p) => match plans.get(p) {
                Some(plan) => plan.clone(),
                None if entry.plan_is_label => PlanEntry::default(),
                None => bail!("client {name}: plan {p:?} is not defined under [plans.{p}]"),
            },
        };
        let rate = entry.requests_per_second.or(plan.requests_per_second);
        let burst = entry.burst.or(plan.burst);
        let max_active_jobs = entry.max_active_jobs.or(plan.max_active_jobs);
        let rate = match rate {
            None => None,
            Some(r) if r.is_finite() && r > 0.0 && r <= 1_000_000.0 => {
                let burst = burst.unwrap_or(((r * 2.0).ceil() as u32).max(1));
                if burst == 0 {
                    bail!("client {name}: burst must be at least 1");
                }
                Some((r, burst))
            }
            Some(r) => bail!(
                "client {name}: requests_per_second must be above 0 and at most 1000000, not {r}"
            ),
        };
        if max_active_jobs == Some(0) {
            bail!("client {name}: max_active_jobs must be at least 1");
        }
        let monthly_attempts = entry.monthly_attempts.or(plan.monthly_attempts);
        let monthly_jobs = entry.monthly_jobs.or(plan.monthly_jobs);
        for (key, value) in [
            ("monthly_attempts", monthly_attempts),
            ("monthly_jobs", monthly_jobs),
        ] {
            if value == Some(0) {
                bail!("client {name}: {key} must be at least 1");
            }
        }
        let limits = crate::api::limits::ClientLimits {
            plan: entry.plan.clone(),
            rate,
            max_active_jobs,
            monthly_attempts,
            monthly_jobs,
        };
        if limits != crate::api::limits::ClientLimits::default() {
            out.insert(name.clone(), limits);
        }
    }
    Ok(out)
}

fn bounded(
    name: &str,
    value: Option<usize>,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
) -> anyhow::Result<usize> {
    let v = value.unwrap_or(default);
    if !range.contains(&v) {
        bail!(
            "{name} must be between {} and {}, not {v}",
            range.start(),
            range.end()
        );
    }
    Ok(v)
}

/// Default `max_workers_per_token`.
pub const DEFAULT_MAX_WORKERS_PER_TOKEN: usize = 256;

/// One table of avtomatika's `workers.toml` (other keys are ignored).
#[derive(Debug, Deserialize)]
struct WorkersTomlEntry {
    token: String,
}

/// avtomatika's `clients.toml` as its docs write it: a table per client
/// with `token` (required), `plan` (a label, and a `[plans.<name>]`'s
/// limits when one is defined), `monthly_attempts`, and any other keys as
/// its parameters.
fn load_clients_toml(path: &Path) -> anyhow::Result<BTreeMap<String, TokenEntry>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the clients config {}", path.display()))?;
    let tables: BTreeMap<String, toml::Table> = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("clients config {}: {}", path.display(), e.message()))?;
    let mut out = BTreeMap::new();
    for (name, mut table) in tables {
        let at = || format!("clients config {}: client {name}", path.display());
        let token = match table.remove("token") {
            Some(toml::Value::String(t)) if !t.is_empty() => t,
            Some(_) => bail!("{}: token must be a non-empty string", at()),
            None => bail!("{}: token is missing", at()),
        };
        let plan = match table.remove("plan") {
            None => None,
            Some(toml::Value::String(p)) => Some(p),
            Some(_) => bail!("{}: plan must be a string", at()),
        };
        let monthly_attempts = match table.remove("monthly_attempts") {
            None => None,
            Some(toml::Value::Integer(n)) if n >= 0 => Some(n as u64),
            Some(_) => bail!("{}: monthly_attempts must be a whole number", at()),
        };
        out.insert(
            name,
            TokenEntry {
                token,
                deploy: false,
                plan,
                requests_per_second: None,
                burst: None,
                max_active_jobs: None,
                monthly_attempts,
                monthly_jobs: None,
                params: (!table.is_empty()).then_some(table),
                plan_is_label: true,
            },
        );
    }
    Ok(out)
}

/// avtomatika's `workers.toml`: worker id (or `pattern:<glob>`) → token.
fn load_workers_toml(path: &Path) -> anyhow::Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the workers config {}", path.display()))?;
    let entries: BTreeMap<String, WorkersTomlEntry> = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("workers config {}: {}", path.display(), e.message()))?;
    Ok(entries
        .into_iter()
        .map(|(id, entry)| (id, entry.token))
        .collect())
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("config file {}: {}", path.display(), e.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_from(std::iter::once("orchestrator").chain(args.iter().copied()))
    }

    #[test]
    fn the_file_is_read_and_flags_override_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.toml");
        std::fs::write(
            &path,
            r#"
listen = "127.0.0.1:9000"
storage = "memory"
log_format = "json"
global_worker_token = "g"
worker_ttl_seconds = 5
[clients.alice]
token = "a-token"
[workers.w1]
token = "w1-token"
"#,
        )
        .unwrap();
        let c = Config::resolve(cli(&["--config", path.to_str().unwrap()])).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.storage, StorageConfig::Memory);
        assert!(c.json_logs);
        assert_eq!(c.clients["a-token"], "alice");
        assert_eq!(c.worker_tokens["w1"], "w1-token");
        assert_eq!(c.worker_ttl, std::time::Duration::from_secs(5));
        let c = Config::resolve(cli(&[
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:9001",
            "--storage",
            "sqlite:x.db",
            "--client-token",
            "b,c",
        ]))
        .unwrap();
        assert_eq!(c.listen.port(), 9001);
        assert_eq!(c.storage, StorageConfig::Sqlite("x.db".into()));
        assert_eq!(c.clients.len(), 3);
    }

    #[test]
    fn missing_tokens_and_bad_values_are_explained() {
        let err = Config::resolve(cli(&["--worker-token", "w"]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("no client token configured"), "{err}");
        let err = Config::resolve(cli(&["--client-token", "c"]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("no worker token configured"), "{err}");
        let err = Config::resolve(cli(&[
            "--client-token",
            "c",
            "--worker-token",
            "w",
            "--storage",
            "redis",
        ]))
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "storage must be `memory`, `sqlite:<path>` or `postgres://…`, not \"redis\""
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "listen = \"x\"\nunknown = 1\n").unwrap();
        let err = Config::resolve(cli(&["--config", path.to_str().unwrap()]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.toml"), "{err}");
    }

    #[test]
    fn a_clients_file_gives_tokens_labels_quotas_and_params() {
        let dir = tempfile::tempdir().unwrap();
        let clients = dir.path().join("clients.toml");
        let config = dir.path().join("o.toml");
        std::fs::write(
            &clients,
            "[acme]\ntoken = \"t1\"\nplan = \"gold\"\nmonthly_attempts = 9\nlangs = [\"en\"]\n",
        )
        .unwrap();
        std::fs::write(&config, "[plans.gold]\nmax_active_jobs = 7\n").unwrap();
        let c = Config::resolve(cli(&[
            "--config",
            config.to_str().unwrap(),
            "--clients-config",
            clients.to_str().unwrap(),
            "--worker-token",
            "w",
        ]))
        .unwrap();
        assert_eq!(c.clients.get("t1").map(String::as_str), Some("acme"));
        let limits = &c.client_limits["acme"];
        assert_eq!(
            (limits.monthly_attempts, limits.max_active_jobs),
            (Some(9), Some(7))
        );
        assert_eq!(
            c.client_info["acme"],
            serde_json::json!({"plan": "gold", "params": {"langs": ["en"]}})
        );
        // A label that names no plan is only a label there.
        std::fs::write(&clients, "[b]\ntoken = \"t2\"\nplan = \"free\"\n").unwrap();
        let c = Config::resolve(cli(&[
            "--clients-config",
            clients.to_str().unwrap(),
            "--worker-token",
            "w",
        ]))
        .unwrap();
        assert_eq!(c.client_info["b"]["plan"], "free");
        std::fs::write(&clients, "[b]\nplan = \"free\"\n").unwrap();
        let err = Config::resolve(cli(&[
            "--clients-config",
            clients.to_str().unwrap(),
            "--worker-token",
            "w",
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.ends_with("client b: token is missing"), "{err}");
    }
}
