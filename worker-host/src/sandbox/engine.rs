//! The [`Sandbox`]: the wasmtime engine, configured once per process, with
//! the linker every plugin is checked against and the limits every task
//! gets. Plugins are loaded against it ([`crate::plugin_store`]) and run in
//! it ([`crate::plugin_store::Plugin::run`]).
//!
//! - Pooling instance allocator sized from the number of concurrent tasks, so a
//!   fresh instance per task costs microseconds; if the pool cannot be reserved
//!   (e.g. a low virtual-memory ulimit) the engine falls back to on-demand
//!   allocation and says so.
//! - Epoch interruption, driven by one ticker thread: running guest code yields
//!   to tokio at every tick and is stopped once its task's deadline has passed.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::state::TaskState;

/// One epoch tick. Guest code yields to the async runtime this often, and a
/// timeout is noticed within one tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Limits applied to every task.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Wall-clock limit of one task, instantiation included.
    pub task_timeout: Duration,
    /// Most linear memory one task may use, in bytes.
    pub memory_limit: usize,
    /// Tasks that may run at once; sizes the instance pool.
    pub max_concurrent_tasks: usize,
    /// Most bytes of stdout (and of stderr) kept per task.
    pub output_capture_bytes: usize,
    /// Most bytes a task's result may hand the host (see [`crate::limits`]).
    pub max_result_bytes: usize,
    /// Directory of wasmtime's on-disk cache of compiled code (keyed by the
    /// component's bytes, the engine's settings and wasmtime's version);
    /// `None` compiles every time.
    pub compile_cache: Option<std::path::PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            task_timeout: Duration::from_secs(60),
            memory_limit: 128 << 20,
            max_concurrent_tasks: 5,
            output_capture_bytes: 256 << 10,
            max_result_bytes: crate::limits::DEFAULT_MAX_RESULT_BYTES,
            compile_cache: None,
        }
    }
}

/// The engine, the linker, and the limits every store gets; cheap to clone.
#[derive(Clone)]
pub struct Sandbox {
    pub engine: Engine,
    /// WASI (granting nothing by itself) plus the `host` interface, HTTP and
    /// config: what every plugin is linked against.
    pub(crate) linker: Arc<Linker<TaskState>>,
    pub config: Arc<SandboxConfig>,
    /// Whether the pooling allocator is in use (false: on-demand fallback).
    pub pooling: bool,
    /// The compiled-code cache, when one is configured (its hit counter
    /// tells a load from the cache from a compile).
    pub cache: Option<wasmtime::Cache>,
    /// One permit per instance the pool holds: taken before instantiating,
    /// so a burst waits for a slot instead of failing to allocate.
    pub instance_permits: Arc<tokio::sync::Semaphore>,
}

impl Sandbox {
    /// Builds the engine and starts its epoch ticker (a thread that lives as
    /// long as the engine does).
    pub fn new(config: SandboxConfig) -> anyhow::Result<Self> {
        let cache = match &config.compile_cache {
            Some(dir) => {
                let mut cache_config = wasmtime::CacheConfig::new();
                cache_config.with_directory(dir);
                Some(
                    wasmtime::Cache::new(cache_config)
                        .map_err(anyhow::Error::from)
                        .with_context(|| {
                            format!("opening the compiled-code cache in {}", dir.display())
                        })?,
                )
            }
            None => None,
        };
        let (engine, pooling) = match Engine::new(&base_config(
            cache.clone(),
            Some(pool_config(&config)),
        )?) {
            Ok(engine) => (engine, true),
            Err(e) => {
                tracing::warn!(
                    "could not reserve the instance pool ({e:#}); falling back to on-demand allocation"
                );
                (Engine::new(&base_config(cache.clone(), None)?)?, false)
            }
        };
        start_epoch_ticker(&engine);
        let linker = super::task::linker(&engine).context("building the plugin linker")?;
        Ok(Self {
            linker: Arc::new(linker),
            engine,
            instance_permits: Arc::new(tokio::sync::Semaphore::new(
                pool_instances(&config) as usize
            )),
            config: Arc::new(config),
            pooling,
            cache,
        })
    }
}

fn base_config(
    cache: Option<wasmtime::Cache>,
    pool: Option<PoolingAllocationConfig>,
) -> anyhow::Result<Config> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    if let Some(pool) = pool {
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    if cache.is_some() {
        config.cache(cache);
    }
    Ok(config)
}

/// Bytes of each pooled memory and table kept resident between tasks.
const KEEP_RESIDENT: usize = 2 << 20;

/// Room for every concurrent task plus the short-lived instances used to
/// describe plugins while loading, with headroom for tasks being torn down.
fn pool_instances(sandbox: &SandboxConfig) -> u32 {
    (sandbox.max_concurrent_tasks as u32)
        .saturating_mul(2)
        .max(4)
        + 4
}

fn pool_config(sandbox: &SandboxConfig) -> PoolingAllocationConfig {
    let instances = pool_instances(sandbox);
    // A Rust component instantiates a handful of core modules (main module
    // plus adapter shims), each with at most a memory and a few tables.
    let core = instances.saturating_mul(8);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(instances)
        .total_core_instances(core)
        .total_memories(core)
        .total_tables(core)
        .total_stacks(instances)
        .max_memory_size(sandbox.memory_limit)
        // Reset a reused slot's first pages with memset instead of madvise:
        // small plugins then cost no page faults or TLB shootdowns per task.
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT)
        // Where the kernel has PAGEMAP_SCAN (Linux 6.7+), only the pages a
        // task dirtied are reset, not the whole resident part: a task that
        // touches a few pages of its memory costs a few pages of memset.
        .pagemap_scan(wasmtime::Enabled::Auto);
    pool
}

fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("wasm-epoch-ticker".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(
            "cannot start the epoch ticker thread: {e}; task timeouts rely on tokio alone"
        );
    }
}
