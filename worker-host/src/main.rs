//! `worker-host`: serve an orchestrator, or run one task locally.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use worker_host::client::OrchestratorClient;
use worker_host::config::{Cli, Command, RunArgs, ServeArgs};
use worker_host::outcome::TaskOutcome;
use worker_host::plugin_store::{PluginLoader, skill_info};
use worker_host::sandbox::{RunOptions, Sandbox, Task};
use worker_host::telemetry;
use worker_host::worker::{Worker, WorkerSettings};

/// mimalloc: a job's many small JSON allocations cost about half as much
/// as with the system allocator (measured with `scripts/bench-compare.sh`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Some(Command::Serve(args)) => args.runtime_threads,
        None => cli.serve.runtime_threads,
        Some(_) => None,
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = threads {
        runtime.worker_threads(threads.into());
    }
    match runtime.enable_all().build() {
        Ok(runtime) => runtime.block_on(run_command(cli)),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_command(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Some(Command::Run(args)) => run(args).await,
        Some(Command::Describe { plugin }) => describe(plugin).await,
        Some(Command::New {
            lang,
            name,
            dir,
            sdk,
        }) => new_plugin(lang, &name, &dir, sdk),
        Some(Command::Serve(args)) => serve(*args).await,
        None => serve(cli.serve).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn new_plugin(
    lang: worker_host::scaffold::Lang,
    name: &str,
    dir: &std::path::Path,
    sdk: Option<std::path::PathBuf>,
) -> anyhow::Result<ExitCode> {
    let sdk = sdk.unwrap_or_else(worker_host::scaffold::default_sdk);
    let root = worker_host::scaffold::create(lang, name, dir, &sdk)?;
    println!(
        "created {} ({lang:?} plugin {name}); see its README.md to test and build it",
        root.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn serve(mut args: ServeArgs) -> anyhow::Result<ExitCode> {
    telemetry::init(args.log_format == "json");
    let generated = args.worker_id.is_none();
    let worker_id = args
        .worker_id
        .get_or_insert_with(|| format!("worker-{}", uuid::Uuid::new_v4()))
        .clone();
    if generated {
        tracing::info!("no WORKER_ID given: this worker is {worker_id}");
    }
    if let Some(addr) = args.metrics_listen {
        // Before the plugins load, so their loads are counted.
        worker_host::metrics::install();
        let id = worker_id.clone();
        tokio::spawn(async move {
            if let Err(e) = worker_host::metrics::serve(addr, id).await {
                tracing::error!("{e:#}");
            }
        });
    }
    let token = args
        .worker_token
        .clone()
        .context("no worker token: set WORKER_TOKEN or pass --worker-token")?;
    anyhow::ensure!(
        rxon::is_valid_worker_id(&worker_id),
        "invalid worker id {worker_id:?}: use 1-128 letters, digits, `_` or `-`"
    );
    let cache_dir = args.cache_dir();
    let engine = Sandbox::new(worker_host::sandbox::SandboxConfig {
        compile_cache: cache_dir.as_ref().map(|d| d.join("compiled")),
        ..args.sandbox.to_config(args.max_concurrent_tasks)?
    })?;
    match &cache_dir {
        Some(dir) => tracing::info!("compiled plugins are cached in {}", dir.display()),
        None => tracing::info!("no compiled-code cache: plugins are compiled at every start"),
    }
    let policy = match &args.policy {
        Some(path) => worker_host::grants::Policy::load(path)?,
        None => worker_host::grants::Policy::default(),
    };
    let loader = std::sync::Arc::new(PluginLoader::with_policy(engine.clone(), policy)?);
    let plugins = if args.plugins_dir.is_dir() {
        loader
            .load_dir(
                &args.plugins_dir,
                &worker_host::plugin_store::PluginSet::default(),
            )
            .await?
    } else {
        tracing::warn!(
            "no plugins directory at {}: serving only plugins deployed through the orchestrator",
            args.plugins_dir.display()
        );
        worker_host::plugin_store::PluginSet::default()
    };
    let client = OrchestratorClient::new(&args.orchestrator_url, &worker_id, &token)?
        .with_call_timeout(seconds("--call-timeout", args.call_timeout)?)?;
    let settings = WorkerSettings {
        worker_type: args.worker_type.clone(),
        max_concurrent_tasks: args.max_concurrent_tasks.max(1),
        heartbeat_interval: seconds("--heartbeat-interval", args.heartbeat_interval)?,
        poll_timeout: seconds("--poll-timeout", args.poll_timeout)?,
        task_secret: args.orchestrator_secret.clone().filter(|s| !s.is_empty()),
        task_channel: !args.no_task_channel,
        declared: args.declare.declared(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )?,
        objects: objects_store(&args.objects, cache_dir.as_deref())?,
        ..WorkerSettings::default()
    };
    let worker = Worker::new(client, engine, plugins, settings);
    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));
    tokio::spawn(worker_host::worker::pull::run(
        worker.clone(),
        loader.clone(),
        worker_host::worker::pull::PullSettings {
            components_dir: cache_dir.as_ref().map(|d| d.join("components")),
            max_plugin_bytes: args.max_plugin_bytes,
        },
        shutdown.clone(),
    ));
    tokio::spawn(worker_host::plugin_watch::watch(
        worker.clone(),
        loader,
        args.plugins_dir.clone(),
        shutdown.clone(),
    ));
    // On a runtime thread, not this `block_on` thread: the channel's reader
    // spawns a task per frame, and from here each spawn and each socket
    // wake-up would cross threads.
    tokio::spawn(async move { worker.run(shutdown).await })
        .await
        .context("the worker loop panicked")??;
    Ok(ExitCode::SUCCESS)
}

/// A number of seconds from the command line: 0.1 to 3600.
fn seconds(flag: &str, value: f64) -> anyhow::Result<std::time::Duration> {
    anyhow::ensure!(
        value.is_finite() && (0.1..=3600.0).contains(&value),
        "{flag} must be between 0.1 and 3600 seconds, not {value}"
    );
    Ok(std::time::Duration::from_secs_f64(value))
}

/// The object store, said in the log.
fn objects_store(
    args: &worker_host::objects::ObjectsArgs,
    cache_dir: Option<&std::path::Path>,
) -> anyhow::Result<Option<std::sync::Arc<worker_host::objects::WorkerObjects>>> {
    let objects = args.open(cache_dir)?;
    match &objects {
        Some(o) => tracing::info!(
            "objects: S3 at {}, bucket {} (plugins granted [objects]; at most {} bytes read and {} written per task)",
            o.endpoint,
            o.bucket,
            o.max_read_bytes,
            o.max_write_bytes
        ),
        None => {
            tracing::info!("objects: no store (S3_ENDPOINT_URL unset); plugins' object calls fail")
        }
    }
    Ok(objects)
}

async fn wait_for_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down: no new tasks; finishing the ones in flight");
    shutdown.cancel();
}

async fn load_one(
    path: &std::path::Path,
    sandbox: Sandbox,
    policy: Option<&std::path::Path>,
) -> anyhow::Result<worker_host::plugin_store::Plugin> {
    let policy = match policy {
        Some(p) => worker_host::grants::Policy::load(p)?,
        None => worker_host::grants::Policy::default(),
    };
    let loader = PluginLoader::with_policy(sandbox, policy)?;
    Ok(loader.load_file(path).await?)
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    telemetry::init(false);
    let engine = Sandbox::new(args.sandbox.to_config(1)?)?;
    let plugin = load_one(&args.plugin, engine.clone(), args.policy.as_deref()).await?;
    let task = match (&args.task, plugin.skills.as_slice()) {
        (Some(task), _) => task.clone(),
        (None, [only]) => only.name.clone(),
        (None, skills) => anyhow::bail!(
            "the plugin serves several skills ({}); choose one with --task",
            skills
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    anyhow::ensure!(
        plugin.skills.iter().any(|s| s.name == task),
        "the plugin does not serve {task}; it serves {}",
        plugin
            .skills
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let params: serde_json::Value =
        serde_json::from_str(&args.params).context("--params is not valid JSON")?;
    anyhow::ensure!(params.is_object(), "--params must be a JSON object");
    let task = Task {
        task_id: format!("local-{}", uuid::Uuid::new_v4()),
        job_id: "local".into(),
        task_type: task,
        params: params.to_string(),
    };
    let outcome = plugin.run(&engine, &task, RunOptions::default()).await;
    println!("{}", serde_json::to_string_pretty(&outcome_json(&outcome))?);
    Ok(match outcome {
        TaskOutcome::Completed { .. } => ExitCode::SUCCESS,
        TaskOutcome::Cancelled => ExitCode::from(2),
        TaskOutcome::Failed { code, message, .. } => {
            eprintln!("task failed: {code}: {message}");
            ExitCode::from(2)
        }
    })
}

async fn describe(path: std::path::PathBuf) -> anyhow::Result<ExitCode> {
    telemetry::init(false);
    let engine = Sandbox::new(worker_host::sandbox::SandboxConfig::default())?;
    let plugin = load_one(&path, engine, None).await?;
    let skills: Vec<rxon::SkillInfo> = plugin.skills.iter().map(skill_info).collect();
    println!("{}", serde_json::to_string_pretty(&skills)?);
    Ok(ExitCode::SUCCESS)
}

/// An outcome as the JSON the local `run` command prints.
fn outcome_json(outcome: &TaskOutcome) -> serde_json::Value {
    match outcome {
        TaskOutcome::Cancelled => serde_json::json!({ "status": rxon::status::CANCELLED }),
        TaskOutcome::Completed { status, data } => {
            serde_json::json!({ "status": status, "data": data })
        }
        TaskOutcome::Failed {
            code,
            message,
            details,
        } => serde_json::json!({
            "status": rxon::status::FAILURE,
            "error": {
                "code": code,
                "message": message,
                "details": details.as_deref().map(worker_host::outcome::details_json),
            }
        }),
    }
}
