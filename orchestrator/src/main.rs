//! `orchestrator`: serve the client and worker APIs.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use orchestrator::api::{self, AppState, auth::Auth};
use orchestrator::config::{Cli, Config, StorageConfig};
use orchestrator::engine::{Engine, EngineSettings, Store};
use orchestrator::storage::{memory::MemoryStorage, sqlite::SqliteStorage};
use orchestrator::{blueprint, telemetry};

/// mimalloc: a job's many small JSON allocations cost about half as much
/// as with the system allocator (measured with `scripts/bench-compare.sh`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let started = Config::resolve(Cli::parse()).and_then(|config| {
        let mut runtime = tokio::runtime::Builder::new_multi_thread();
        if let Some(threads) = config.runtime_threads {
            runtime.worker_threads(threads);
        }
        runtime.enable_all().build()?.block_on(run(config))
    });
    match started {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    telemetry::init(config.json_logs);
    let blueprints = blueprint::load_dir(&config.blueprints_dir)?;
    if blueprints.is_empty() {
        tracing::warn!(
            "no blueprint (*.toml) in {}: deploy one with PUT /api/v1/blueprints/<name> or add a file there",
            config.blueprints_dir.display()
        );
    }
    let store = match &config.storage {
        StorageConfig::Memory => Store::Local(Arc::new(MemoryStorage::default())),
        StorageConfig::Sqlite(path) => Store::Local(Arc::new(SqliteStorage::open(path)?)),
        StorageConfig::Postgres(url) => Store::Postgres(url.clone()),
    };
    let settings = EngineSettings {
        worker_ttl: config.worker_ttl,
        channel_grace: config.channel_grace,
        default_result_timeout: config.default_result_timeout,
        task_secret: config.orchestrator_secret.clone(),
        max_workers: config.max_workers,
        max_worker_ttl: config.max_worker_ttl,
        max_active_jobs_per_client: config.max_active_jobs_per_client,
        max_transitions: config.max_transitions_per_job,
        max_map_items: config.max_map_items,
        max_job_depth: config.max_job_depth,
        idempotency_retention: config.idempotency_retention,
        max_map_result_bytes: config.max_map_result_bytes,
        max_skills_per_worker: config.max_skills_per_worker,
        webhook_allowed_hosts: config.webhook_allowed_hosts.clone(),
        max_concurrent_webhooks: config.max_concurrent_webhooks,
        max_webhooks_per_client: config.max_webhooks_per_client,
        max_webhooks_per_host: config.max_webhooks_per_host,
        max_plugin_bytes: config.max_plugin_bytes,
        finished_job_retention: config.finished_job_retention,
        webhook_lease: config.webhook_lease,
        clients: Arc::new(config.client_info.clone()),
        ..EngineSettings::default()
    };
    if settings.task_secret.is_some() {
        tracing::info!("tasks are signed with ORCHESTRATOR_SECRET_KEY (`sig`)");
    }
    let engine = Engine::start(blueprints, store, settings).await?;
    let auth = Auth::new(
        config.clients.clone(),
        config.global_worker_token.clone(),
        config.worker_tokens.clone(),
        config.require_signatures,
    )
    .with_deployers(config.deployers.iter().cloned())
    .with_max_workers_per_token(config.max_workers_per_token);
    orchestrator::metrics::install();
    let state = AppState::new(
        engine.clone(),
        auth,
        config.max_body_bytes,
        orchestrator::api::throttle::AuthFailures::new(
            config.auth_failures_per_minute,
            config.trusted_proxies.clone(),
        ),
    );
    let scheduler = orchestrator::schedule::Scheduler::start(
        engine.clone(),
        config.schedules.clone(),
        config.schedule_timezone,
    );
    let objects = std::sync::Arc::new(orchestrator::objects::Objects::open(
        config.objects.clone(),
        config.orchestrator_secret.as_deref(),
    )?);
    describe_objects(&objects).await;
    tokio::spawn(orchestrator::objects::sweep::run(
        objects.clone(),
        engine.clone(),
        engine.stopping(),
    ));
    let state = state
        .with_scheduler(scheduler)
        .with_objects(objects)
        .with_client_limits(config.client_limits.clone());
    let app = api::router(state);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let base = format!("http://{addr}");
    tracing::info!("orchestrator listening on {base}");
    let mut versions = std::collections::BTreeSet::new();
    for bp in engine.blueprints() {
        match &bp.create_path {
            Some(path) => tracing::info!("  POST {base}{path}   (blueprint {})", bp.name),
            None => tracing::info!(
                "  (blueprint {}: internal, started only as a child job)",
                bp.name
            ),
        }
        versions.insert(
            bp.api_version
                .as_deref()
                .map(|v| format!("/api/{v}"))
                .unwrap_or_else(|| "/api".into()),
        );
    }
    for prefix in versions {
        tracing::info!(
            "  GET  {base}{prefix}/jobs/{{id}}   (job status; ?wait=<seconds> waits for the end)"
        );
        tracing::info!("  GET  {base}{prefix}/workers");
    }
    tracing::info!(
        "clients authenticate with the header X-Client-Token: <token> (X-Avtomatika-Token is accepted too)"
    );
    tracing::info!("workers connect to {base} (RXON worker API under /_worker)");
    tokio::spawn(blueprint::watch::watch(
        engine.clone(),
        config.blueprints_dir.clone(),
    ));
    let stopping = engine.clone();
    api::serve::serve(listener, app, config.serve.clone(), async move {
        shutdown_signal().await;
        // Idle long-polls and `?wait=` clients would hold the graceful
        // shutdown for up to 60 s: they are answered at once.
        stopping.begin_shutdown();
    })
    .await?;
    tracing::info!("saving pending changes");
    engine.sync_storage().await;
    tracing::info!("stopped");
    Ok(())
}

/// Says where jobs' files go, and whether the store answers.
async fn describe_objects(objects: &orchestrator::objects::Objects) {
    use orchestrator::objects::store::Backend;
    let config = objects.config();
    let place = match &config.backend {
        Backend::Local(dir) => format!("the local directory {}", dir.display()),
        Backend::S3 { endpoint, .. } => {
            format!("S3 at {endpoint}, bucket {}", config.bucket)
        }
    };
    let kept = match config.retention {
        Some(d) => format!(
            "kept {} after their job ends",
            humantime::format_duration(d)
        ),
        None => "kept after their job ends (auto cleanup off)".into(),
    };
    match objects.check().await {
        Ok(()) => tracing::info!(
            "jobs' files: {place}, at most {} bytes each, {kept}",
            config.max_upload_bytes
        ),
        Err(e) => tracing::error!(
            "jobs' files: {place} does not answer ({e}); file requests will fail with 502 until it does"
        ),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}
