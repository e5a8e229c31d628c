//! Command line and environment of the `worker-host` binary.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::sandbox::SandboxConfig;

#[derive(Debug, Parser)]
#[command(
    name = "worker-host",
    version,
    about = "Runs sandboxed WebAssembly task plugins for an RXON orchestrator (ours or avtomatika)",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Serve an orchestrator (the default when no subcommand is given).
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Connect to an orchestrator and serve tasks with the plugins in a directory.
    Serve(Box<ServeArgs>),
    /// Run one task with one plugin locally, no orchestrator needed; prints the result JSON.
    Run(RunArgs),
    /// Load a plugin and print the skills it declares.
    Describe {
        /// The plugin component (`.wasm`).
        plugin: PathBuf,
    },
    /// Create a new plugin project from a template (it tests and builds as
    /// generated; see its README.md).
    New {
        /// The plugin's language.
        #[arg(long, value_enum)]
        lang: crate::scaffold::Lang,
        /// The plugin's name, also its skill's: lower-case letters, digits, `_`.
        name: String,
        /// Where to create the project directory `<name>`.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The Rust guest SDK (`plugins/sdk` of this repository) a Rust
        /// project depends on; default: the checkout this binary was built from.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct SandboxArgs {
    /// Wall-clock limit of one task, in seconds.
    #[arg(long, env = "TASK_TIMEOUT_SECONDS", default_value_t = 60.0)]
    pub task_timeout: f64,
    /// Memory limit of one task, in MiB.
    #[arg(long, env = "TASK_MEMORY_LIMIT_MB", default_value_t = 128)]
    pub memory_limit_mb: usize,
    /// Most bytes a task's result may hand the host (status and data, or error
    /// message and details); a larger result fails the task with
    /// RESOURCE_EXHAUSTED_ERROR. Keep it below the orchestrator's body limit.
    #[arg(long, env = "MAX_RESULT_BYTES", default_value_t = crate::limits::DEFAULT_MAX_RESULT_BYTES)]
    pub max_result_bytes: usize,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Base URL of the orchestrator.
    #[arg(
        long,
        env = "ORCHESTRATOR_URL",
        default_value = "http://localhost:8080"
    )]
    pub orchestrator_url: String,
    /// This worker's id (letters, digits, `_` and `-`) [default:
    /// `worker-<uuid>`, new at each start, as avtomatika's SDK does].
    #[arg(long, env = "WORKER_ID")]
    pub worker_id: Option<String>,
    /// Token for the worker API (the orchestrator's global or this worker's own).
    #[arg(long, env = "WORKER_TOKEN", hide_env_values = true)]
    pub worker_token: Option<String>,
    /// Worker type reported at registration.
    #[arg(long, env = "WORKER_TYPE", default_value = "wasm-worker")]
    pub worker_type: String,
    /// Directory of plugin components (`*.wasm`).
    #[arg(long, env = "PLUGINS_DIR", default_value = "dist/plugins")]
    pub plugins_dir: PathBuf,
    /// Tasks run at the same time.
    #[arg(long, env = "MAX_CONCURRENT_TASKS", default_value_t = 5)]
    pub max_concurrent_tasks: usize,
    /// Threads of the async runtime, which also run the plugins (1-1024)
    /// [default: one per core]. Fewer threads cost less CPU per task on a
    /// machine shared with other processes, but CPU-bound plugins then
    /// share those threads.
    #[arg(long, env = "RUNTIME_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub runtime_threads: Option<u16>,
    /// Seconds between heartbeats.
    #[arg(long, env = "HEARTBEAT_INTERVAL", default_value_t = 15.0)]
    pub heartbeat_interval: f64,
    /// Most seconds one call to the orchestrator (register, heartbeat,
    /// result, event, plugin list) may take, answer included; past it the
    /// call fails with a log line and is retried as any failure.
    #[arg(long, env = "CALL_TIMEOUT_SECONDS", default_value_t = 30.0)]
    pub call_timeout: f64,
    /// Seconds one long-poll may wait for a task.
    #[arg(long, env = "POLL_TIMEOUT", default_value_t = 30.0)]
    pub poll_timeout: f64,
    /// Take tasks by HTTP long-poll only, never over the persistent task
    /// channel (the worker otherwise opens it when the orchestrator offers
    /// it, and polls over HTTP when it does not).
    #[arg(long, env = "NO_TASK_CHANNEL")]
    pub no_task_channel: bool,
    /// Serve Prometheus metrics at `http://ADDR/metrics` and the probe
    /// `http://ADDR/health` (e.g.
    /// `127.0.0.1:9464`); off when not given.
    #[arg(long, env = "METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Log format: `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// The operator's policy file: what plugin manifests may be granted
    /// (read-only directories, config values); see docs/guide/plugins.md,
    /// "What a plugin may do". Without one, manifests may only tighten limits.
    #[arg(long, env = "WORKER_POLICY")]
    pub policy: Option<PathBuf>,
    /// The orchestrator's secret (as avtomatika names it): when set, every task
    /// must carry a valid orchestrator signature (`sig`); others are refused
    /// and reported as SECURITY_ERROR.
    #[arg(long, env = "ORCHESTRATOR_SECRET_KEY", hide_env_values = true)]
    pub orchestrator_secret: Option<String>,
    /// Where compiled plugins (`compiled/`) and components deployed through
    /// the orchestrator (`components/`) are kept, so a restart neither
    /// compiles nor downloads again [default: $XDG_CACHE_HOME/worker-host,
    /// else ~/.cache/worker-host].
    #[arg(long, env = "WORKER_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Keep nothing on disk: compile every plugin at every start.
    #[arg(long, env = "NO_COMPILE_CACHE")]
    pub no_compile_cache: bool,
    /// Largest plugin component downloaded from the orchestrator's registry.
    #[arg(long, env = "MAX_PLUGIN_BYTES", default_value_t = 64 << 20)]
    pub max_plugin_bytes: usize,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    #[command(flatten)]
    pub declare: crate::declare::DeclareArgs,
    /// The object store plugins granted `[objects]` read and write.
    #[command(flatten)]
    pub objects: crate::objects::ObjectsArgs,
}

impl ServeArgs {
    /// The cache directory, unless caching is off.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        if self.no_compile_cache {
            return None;
        }
        self.cache_dir.clone().or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .map(|base| base.join("worker-host"))
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The plugin component (`.wasm`).
    pub plugin: PathBuf,
    /// Task type (skill) to run; defaults to the plugin's only skill.
    #[arg(long)]
    pub task: Option<String>,
    /// Params as a JSON object.
    #[arg(long, default_value = "{}")]
    pub params: String,
    /// The policy a manifest beside the plugin is checked against (as for
    /// `serve`); without one, the manifest may only tighten limits.
    #[arg(long, env = "WORKER_POLICY")]
    pub policy: Option<PathBuf>,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// Longest `--task-timeout` (a day).
const MAX_TASK_TIMEOUT_SECS: f64 = 86_400.0;

impl SandboxArgs {
    pub fn to_config(&self, max_concurrent_tasks: usize) -> anyhow::Result<SandboxConfig> {
        anyhow::ensure!(
            self.task_timeout.is_finite() && self.task_timeout > 0.0,
            "--task-timeout must be a positive number of seconds"
        );
        anyhow::ensure!(
            self.memory_limit_mb >= 1,
            "--memory-limit-mb must be at least 1"
        );
        anyhow::ensure!(
            self.task_timeout <= MAX_TASK_TIMEOUT_SECS,
            "--task-timeout must be at most {MAX_TASK_TIMEOUT_SECS} seconds"
        );
        anyhow::ensure!(
            (1024..=(256 << 20)).contains(&self.max_result_bytes),
            "--max-result-bytes must be between 1024 and {}",
            256 << 20
        );
        anyhow::ensure!(
            self.memory_limit_mb <= 64 << 10,
            "--memory-limit-mb must be at most 65536"
        );
        Ok(SandboxConfig {
            task_timeout: Duration::from_secs_f64(self.task_timeout),
            max_result_bytes: self.max_result_bytes,
            memory_limit: self.memory_limit_mb << 20,
            max_concurrent_tasks: max_concurrent_tasks.max(1),
            ..SandboxConfig::default()
        })
    }
}
