//! The worker loop: register, heartbeat, long-poll, execute, submit.
//!
//! `max_concurrent_tasks` slots each poll for a task, run it in the sandbox and
//! submit its result. A separate loop sends heartbeats. When the orchestrator
//! is unreachable every loop backs off and retries; when it has forgotten this
//! worker, the worker registers again. On shutdown the slots stop polling,
//! finish what they run, submit those results and the worker says goodbye.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rxon::{Heartbeat, TaskPayload, WorkerEventPayload, WorkerRegistration};
use sha2::Digest;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::client::{ClientError, OrchestratorClient};
use crate::outcome::TaskOutcome;
use crate::plugin_store::{PluginSet, skill_info};
use crate::sandbox::state::Progress;
use crate::sandbox::{SandboxEngine, TaskInput, task};

/// How the worker behaves towards the orchestrator.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub worker_type: String,
    pub max_concurrent_tasks: usize,
    pub heartbeat_interval: Duration,
    pub poll_timeout: Duration,
    /// First retry delay after an orchestrator error; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            worker_type: "wasm-worker".into(),
            max_concurrent_tasks: 5,
            heartbeat_interval: Duration::from_secs(15),
            poll_timeout: Duration::from_secs(30),
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// A running worker; cheap to clone (shared state).
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

struct Inner {
    client: OrchestratorClient,
    engine: SandboxEngine,
    /// The plugins in service; swapped whole when the directory changes.
    plugins: std::sync::RwLock<Arc<PluginSet>>,
    settings: WorkerSettings,
    /// Ids of the tasks running now, reported in heartbeats.
    in_flight: Mutex<BTreeSet<String>>,
    /// Serialises re-registration so many loops noticing at once register once.
    registration: tokio::sync::Mutex<u64>,
}

/// Doubling delay between retries, reset by a success.
struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    fn new(settings: &WorkerSettings) -> Self {
        Self {
            next: settings.min_backoff,
            min: settings.min_backoff,
            max: settings.max_backoff,
        }
    }
    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
    fn reset(&mut self) {
        self.next = self.min;
    }
}

impl Worker {
    pub fn new(
        client: OrchestratorClient,
        engine: SandboxEngine,
        plugins: PluginSet,
        settings: WorkerSettings,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                engine,
                plugins: std::sync::RwLock::new(Arc::new(plugins)),
                settings,
                in_flight: Mutex::new(BTreeSet::new()),
                registration: tokio::sync::Mutex::new(0),
            }),
        }
    }

    /// The plugins in service now.
    pub fn plugins(&self) -> Arc<PluginSet> {
        self.inner
            .plugins
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn skills(&self) -> Vec<rxon::SkillInfo> {
        self.plugins()
            .skills()
            .map(|(s, _)| skill_info(s))
            .collect()
    }

    fn skills_hash(&self) -> String {
        hex_sha256(&serde_json::to_vec(&self.skills()).unwrap_or_default())
    }

    /// Puts a new plugin set in service and tells the orchestrator about the
    /// new skills. Tasks already running keep the plugin they started with.
    pub async fn replace_plugins(&self, plugins: PluginSet, shutdown: &CancellationToken) {
        let before = self.plugins().skill_names();
        *self
            .inner
            .plugins
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(plugins);
        let after = self.plugins().skill_names();
        tracing::info!(
            "plugins reloaded; supported tasks: {} (before: {})",
            after.join(", "),
            before.join(", ")
        );
        let mut generation = self.inner.registration.lock().await;
        if self.register_until_ok(shutdown).await {
            *generation += 1;
        }
    }

    /// The registration message this worker sends.
    pub fn registration(&self) -> WorkerRegistration {
        let inner = &self.inner;
        let skills = self.skills();
        WorkerRegistration {
            worker_id: inner.client.worker_id().to_string(),
            worker_type: inner.settings.worker_type.clone(),
            available_skills: Some(skills.iter().map(|s| s.name.clone()).collect()),
            supported_skills: skills,
            capabilities: Some(serde_json::json!({
                "hostname": hostname(),
                "ip_address": "127.0.0.1",
                "cost_per_skill": {},
                "extra": {
                    "runtime": "wasmtime",
                    "sandboxed": true,
                    "max_concurrent_tasks": inner.settings.max_concurrent_tasks,
                    "websockets": false
                }
            })),
            resources: Some(serde_json::json!({
                "properties": {
                    "cpu_cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
                    "max_concurrent_tasks": inner.settings.max_concurrent_tasks
                }
            })),
            installed_software: Some(serde_json::json!({
                "worker-host": env!("CARGO_PKG_VERSION"),
                "wasmtime": "48"
            })),
            skills_hash: Some(self.skills_hash()),
            metadata: None,
            security: None,
            timestamp: None,
        }
    }

    /// Runs until `shutdown` is cancelled, then drains and says goodbye.
    pub async fn run(&self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let inner = &self.inner;
        tracing::info!("worker id: {}", inner.client.worker_id());
        tracing::info!("orchestrator: {}", inner.client.base_url());
        tracing::info!(
            "supported tasks: {}",
            self.plugins().skill_names().join(", ")
        );
        if self.plugins().is_empty() {
            tracing::warn!("no plugin loaded: this worker cannot serve any task");
        }
        if !self.register_until_ok(&shutdown).await {
            tracing::info!("stopped before registering");
            return Ok(());
        }
        let heartbeats = tokio::spawn(self.clone().heartbeat_loop(shutdown.clone()));
        tracing::info!(
            "polling for tasks started ({} concurrent)",
            inner.settings.max_concurrent_tasks
        );
        let mut slots = Vec::new();
        for slot in 0..inner.settings.max_concurrent_tasks.max(1) {
            slots.push(tokio::spawn(self.clone().slot_loop(slot, shutdown.clone())));
        }
        for slot in slots {
            if let Err(e) = slot.await {
                tracing::error!("a task slot ended abnormally: {e}");
            }
        }
        heartbeats.abort();
        self.say_goodbye().await;
        Ok(())
    }

    /// Registers, retrying with backoff; false if shut down first.
    async fn register_until_ok(&self, shutdown: &CancellationToken) -> bool {
        let mut backoff = Backoff::new(&self.inner.settings);
        loop {
            match self.inner.client.register(&self.registration()).await {
                Ok(response) => {
                    if let Some(warning) = response.warning {
                        tracing::warn!("orchestrator: {warning}");
                    }
                    tracing::info!(
                        "registered with the orchestrator as {} ({})",
                        self.inner.client.worker_id(),
                        response.status
                    );
                    return true;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    match &e {
                        ClientError::Unauthorized { .. } => tracing::error!(
                            "registration rejected: {e}; check WORKER_TOKEN/WORKER_ID. Retrying in {delay:?}"
                        ),
                        _ => tracing::warn!("registration failed: {e}; retrying in {delay:?}"),
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Registers again after the orchestrator forgot us; loops that notice at
    /// the same time share one registration (`seen` is the generation they saw).
    async fn reregister(&self, seen: u64, shutdown: &CancellationToken) {
        let mut generation = self.inner.registration.lock().await;
        if *generation != seen {
            return;
        }
        tracing::warn!("the orchestrator does not know this worker any more; registering again");
        if self.register_until_ok(shutdown).await {
            *generation += 1;
        }
    }

    async fn generation(&self) -> u64 {
        *self.inner.registration.lock().await
    }

    fn heartbeat(&self, status: &str, full_sync: bool) -> Heartbeat {
        let inner = &self.inner;
        let current: Vec<String> = lock(&inner.in_flight).iter().cloned().collect();
        let status = if status.is_empty() {
            if current.len() < inner.settings.max_concurrent_tasks {
                "idle"
            } else {
                "busy"
            }
        } else {
            status
        };
        Heartbeat {
            worker_id: inner.client.worker_id().to_string(),
            status: status.to_string(),
            usage: None,
            current_tasks: Some(current),
            supported_skills: full_sync.then(|| self.skills()),
            available_skills: Some(self.plugins().skill_names()),
            skills_hash: Some(self.skills_hash()),
            security: None,
            timestamp: None,
        }
    }

    async fn heartbeat_loop(self, shutdown: CancellationToken) {
        let mut full_sync = false;
        let mut backoff = Backoff::new(&self.inner.settings);
        let mut delay = self.inner.settings.heartbeat_interval;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            let seen = self.generation().await;
            match self
                .inner
                .client
                .heartbeat(&self.heartbeat("", full_sync))
                .await
            {
                Ok(response) => {
                    tracing::info!("heartbeat sent ({})", response.status);
                    full_sync = response.require_full_sync.unwrap_or(false);
                    if response.require_registration == Some(true) {
                        self.reregister(seen, &shutdown).await;
                    }
                    for task_id in response.cancel_task_ids.unwrap_or_default() {
                        tracing::warn!(
                            task_id,
                            "orchestrator asked to cancel task; it will finish but its result will be ignored"
                        );
                    }
                    backoff.reset();
                    delay = self.inner.settings.heartbeat_interval;
                }
                Err(e) if e.needs_registration() => self.reregister(seen, &shutdown).await,
                Err(e) => {
                    delay = backoff
                        .next_delay()
                        .min(self.inner.settings.heartbeat_interval);
                    tracing::warn!("heartbeat failed: {e}; retrying in {delay:?}");
                }
            }
        }
    }

    async fn slot_loop(self, slot: usize, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(&self.inner.settings);
        loop {
            let seen = self.generation().await;
            let polled = tokio::select! {
                _ = shutdown.cancelled() => return,
                polled = self.inner.client.next_task(self.inner.settings.poll_timeout) => polled,
            };
            match polled {
                Ok(Some(payload)) => {
                    backoff.reset();
                    self.handle_task(payload).await;
                }
                Ok(None) => backoff.reset(),
                Err(e) if e.needs_registration() => self.reregister(seen, &shutdown).await,
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(slot, "polling failed: {e}; retrying in {delay:?}");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Executes one task and submits its result.
    async fn handle_task(&self, payload: TaskPayload) {
        let inner = &self.inner;
        let params = serde_json::Value::Object(payload.params.clone()).to_string();
        tracing::info!(
            task_id = %payload.task_id,
            job_id = %payload.job_id,
            "received task {} ({}) for job {} with params {params}",
            payload.task_id,
            payload.task_type,
            payload.job_id
        );
        lock(&inner.in_flight).insert(payload.task_id.clone());
        let started = std::time::Instant::now();
        let outcome = self.execute(&payload, params).await;
        let elapsed = started.elapsed();
        match &outcome {
            TaskOutcome::Completed { status, data } => tracing::info!(
                task_id = %payload.task_id,
                "task {} done in {elapsed:.1?}: {status} {}",
                payload.task_id,
                serde_json::Value::Object(data.clone())
            ),
            TaskOutcome::Failed { code, message } => tracing::warn!(
                task_id = %payload.task_id,
                "task {} failed in {elapsed:.1?}: {code}: {message}",
                payload.task_id
            ),
        }
        let mut result =
            outcome.into_result(&payload.job_id, &payload.task_id, inner.client.worker_id());
        result.costs = Some(
            [(
                "execution_time_seconds".to_string(),
                serde_json::json!(elapsed.as_secs_f64()),
            )]
            .into_iter()
            .collect(),
        );
        self.submit_with_retries(&result).await;
        lock(&inner.in_flight).remove(&payload.task_id);
    }

    async fn execute(&self, payload: &TaskPayload, params: String) -> TaskOutcome {
        let inner = &self.inner;
        let plugins = self.plugins();
        let Some(plugin) = plugins.get(&payload.task_type) else {
            return TaskOutcome::failed(
                rxon::error_code::PERMANENT,
                format!(
                    "this worker has no plugin for task type {}",
                    payload.task_type
                ),
            );
        };
        let input = TaskInput {
            task_id: payload.task_id.clone(),
            job_id: payload.job_id.clone(),
            task_type: payload.task_type.clone(),
            params,
        };
        let (progress_tx, progress_rx) = watch::channel(None);
        let forwarder = tokio::spawn(self.clone().forward_progress(payload.clone(), progress_rx));
        let outcome = task::run_task(&inner.engine, &plugin.pre, &input, progress_tx).await;
        forwarder.abort();
        outcome
    }

    /// Sends the task's latest progress as an RXON `progress` event at most
    /// once a second while it runs; fast tasks send none.
    async fn forward_progress(
        self,
        payload: TaskPayload,
        mut rx: watch::Receiver<Option<Progress>>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            if !rx.has_changed().unwrap_or(false) {
                continue;
            }
            let Some((fraction, message)) = rx.borrow_and_update().clone() else {
                continue;
            };
            let worker_id = self.inner.client.worker_id().to_string();
            let event = WorkerEventPayload {
                event_id: uuid::Uuid::new_v4().to_string(),
                worker_id: worker_id.clone(),
                origin_worker_id: worker_id,
                event_type: "progress".into(),
                payload: serde_json::json!({"progress": fraction, "message": message})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                target_job_id: Some(payload.job_id.clone()),
                target_task_id: Some(payload.task_id.clone()),
                origin_task_id: Some(payload.task_id.clone()),
                security: None,
                timestamp: None,
            };
            if let Err(e) = self.inner.client.send_event(&event).await {
                tracing::debug!(task_id = %payload.task_id, "progress event not delivered: {e}");
            }
        }
    }

    async fn submit_with_retries(&self, result: &rxon::TaskResult) {
        let mut backoff = Backoff {
            next: Duration::from_secs(1),
            min: Duration::from_secs(1),
            max: Duration::from_secs(16),
        };
        for attempt in 1..=6 {
            match self.inner.client.submit_result(result).await {
                Ok(response) if response.status == "ignored" => {
                    tracing::warn!(
                        task_id = %result.task_id,
                        "orchestrator ignored the result of task {}: {} {}",
                        result.task_id,
                        response.reason.unwrap_or_default(),
                        response.message.unwrap_or_default()
                    );
                    return;
                }
                Ok(_) => {
                    tracing::info!(task_id = %result.task_id, "result of task {} accepted", result.task_id);
                    return;
                }
                Err(e @ (ClientError::Unreachable { .. } | ClientError::Http { .. }))
                    if attempt < 6 =>
                {
                    let delay = backoff.next_delay();
                    tracing::warn!(task_id = %result.task_id, "submitting the result failed: {e}; retry {attempt} in {delay:?}");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    tracing::error!(task_id = %result.task_id, "result of task {} lost: {e}", result.task_id);
                    return;
                }
            }
        }
    }

    async fn say_goodbye(&self) {
        match tokio::time::timeout(
            Duration::from_secs(5),
            self.inner
                .client
                .heartbeat(&self.heartbeat("offline", false)),
        )
        .await
        {
            Ok(Ok(_)) => tracing::info!("told the orchestrator we are going offline; goodbye"),
            Ok(Err(e)) => tracing::warn!("could not say goodbye to the orchestrator: {e}"),
            Err(_) => tracing::warn!("could not say goodbye to the orchestrator: timed out"),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn hex_sha256(bytes: &[u8]) -> String {
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Runs one task locally (the `run` subcommand); no orchestrator involved.
pub async fn run_local(
    engine: &SandboxEngine,
    plugin: &crate::plugin_store::Plugin,
    task_type: &str,
    params: &str,
) -> TaskOutcome {
    let input = TaskInput {
        task_id: format!("local-{}", uuid::Uuid::new_v4()),
        job_id: "local".into(),
        task_type: task_type.into(),
        params: params.into(),
    };
    let (progress, _) = watch::channel(None);
    task::run_task(engine, &plugin.pre, &input, progress).await
}
