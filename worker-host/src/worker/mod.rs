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

use rxon::{Heartbeat, WorkerRegistration};
use sha2::Digest;
use tokio_util::sync::CancellationToken;

mod tasks;

pub use tasks::run_local;

use crate::client::{ClientError, OrchestratorClient};
use crate::plugin_store::{PluginSet, skill_info};
use crate::sandbox::SandboxEngine;

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
