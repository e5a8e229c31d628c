//! Helpers shared by the orchestrator's integration tests.
#![allow(dead_code)]

#[path = "../../../tests/tests/e2e/support/pg.rs"]
mod pg;

use std::sync::Arc;
use std::time::Duration;

use orchestrator::blueprint;
use orchestrator::engine::{Engine, EngineSettings, NewJob, Store};
use orchestrator::job::{Job, JobStatus};
use orchestrator::storage::memory::MemoryStorage;
use serde_json::{Value, json};
use uuid::Uuid;

pub const HEAD: &str = "name = \"flow\"\napi_endpoint = \"/jobs/test\"\napi_version = \"v1\"\n";

pub async fn engine_with(states: &str, settings: EngineSettings) -> Engine {
    engine_on(
        states,
        settings,
        Store::Local(Arc::new(MemoryStorage::default())),
    )
    .await
}

/// Separates the `flow` blueprint's states from further whole blueprints
/// (with their own `name`) in the text a test gives.
pub const MORE: &str = "\n### another blueprint\n";

pub async fn engine_on(states: &str, settings: EngineSettings, store: Store) -> Engine {
    let mut parts = states.split(MORE);
    let flow = parts.next().unwrap_or_default();
    let mut bps = vec![blueprint::parse("flow.toml", &format!("{HEAD}{flow}")).unwrap()];
    for (i, text) in parts.enumerate() {
        bps.push(blueprint::parse(&format!("more-{i}.toml"), text).unwrap());
    }
    Engine::start(bps, store, settings).await.unwrap()
}

pub async fn engine(states: &str) -> Engine {
    engine_with(states, EngineSettings::default()).await
}

/// Where a test's engine keeps its state: the machine tests run on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// One instance, memory storage, tokio time paused.
    Memory,
    /// The shared-database backend on a PostgreSQL database of the test's
    /// own (the machine's server), real time.
    Postgres,
}

/// Runs the test function `$name(Holder)` once per backend, as
/// `$name::memory` (paused time) and `$name::postgres`.
#[macro_export]
macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(start_paused = true)]
            async fn memory() {
                super::$name($crate::common::Holder::Memory).await
            }
            #[tokio::test]
            async fn postgres() {
                super::$name($crate::common::Holder::Postgres).await
            }
        }
    };
}

/// An engine and, on PostgreSQL, its database (dropped after it).
pub struct Held {
    engine: Engine,
    _db: Option<pg::TestDatabase>,
}

impl std::ops::Deref for Held {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.engine
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // The background loops stop before the database goes.
        self.engine.begin_shutdown();
    }
}

impl Holder {
    pub async fn engine(self, states: &str) -> Held {
        self.engine_with(states, EngineSettings::default()).await
    }

    pub async fn engine_with(self, states: &str, settings: EngineSettings) -> Held {
        match self {
            Self::Memory => Held {
                engine: engine_with(states, settings).await,
                _db: None,
            },
            Self::Postgres => {
                let db = pg::TestDatabase::create().await;
                Held {
                    engine: engine_on(states, settings, Store::Postgres(db.url.clone())).await,
                    _db: Some(db),
                }
            }
        }
    }

    /// A second instance on the same database as `first`, with its
    /// settings (PostgreSQL only).
    pub async fn second(first: &Held, states: &str) -> Engine {
        let url = first._db.as_ref().expect("a PostgreSQL engine").url.clone();
        // The first one's settings.
        let settings = first.settings().clone();
        engine_on(states, settings, Store::Postgres(url)).await
    }

    /// [`Holder::pick`] for seconds written into a blueprint.
    pub fn pick_secs(self, memory: u64, real: u64) -> String {
        self.pick(Duration::from_secs(memory), Duration::from_secs(real))
            .as_secs()
            .to_string()
    }

    /// `memory` on paused time; `real` (shorter) where time is real.
    pub fn pick(self, memory: Duration, real: Duration) -> Duration {
        match self {
            Self::Memory => memory,
            Self::Postgres => real,
        }
    }
}

/// Long-polls for up to `within`.
pub async fn poll_within(
    engine: &Engine,
    worker: &str,
    within: Duration,
) -> Option<rxon::TaskPayload> {
    engine.next_task(worker, within).await.unwrap()
}

/// Whether `check` holds within `within` (looked at every 20 ms): a timer
/// on a shared database fires when an instance looks, up to half a second
/// after it is due.
pub async fn eventually(within: Duration, check: impl AsyncFn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until job `id` has `status` (up to `within`); the job then.
pub async fn job_reaches(engine: &Engine, id: Uuid, status: JobStatus, within: Duration) -> Job {
    eventually(within, async || job(engine, id).await.status == status).await;
    job(engine, id).await
}

pub async fn create(engine: &Engine, data: Value) -> Uuid {
    try_create(engine, data, json!({})).await.unwrap()
}

/// Creates a `flow` job with `data` and the job options `options`
/// (`metadata`, `policy`, `max_transitions`, …); the engine's answer.
pub async fn try_create(
    engine: &Engine,
    data: Value,
    options: Value,
) -> Result<Uuid, orchestrator::engine::EngineError> {
    engine
        .create_job(NewJob {
            blueprint: "flow".into(),
            owner: "default".into(),
            initial_data: data.as_object().cloned().unwrap_or_default(),
            options: serde_json::from_value(options).unwrap(),
            ..NewJob::default()
        })
        .await
}

pub async fn job(engine: &Engine, id: Uuid) -> Job {
    engine.get_job(id).await.unwrap().unwrap()
}

pub async fn register(engine: &Engine, worker: &str, skills: &[&str]) {
    let reg: rxon::WorkerRegistration = serde_json::from_value(json!({
        "worker_id": worker,
        "worker_type": "test",
        "supported_skills": skills.iter().map(|s| json!({"name": s})).collect::<Vec<_>>(),
    }))
    .unwrap();
    engine.register_worker(&reg).await.expect("registered");
}

/// Whether `worker` is registered.
pub async fn registered(engine: &Engine, worker: &str) -> bool {
    engine.workers().await.iter().any(|w| w.worker_id == worker)
}

/// Polls without waiting.
pub async fn poll(engine: &Engine, worker: &str) -> Option<rxon::TaskPayload> {
    engine.next_task(worker, Duration::ZERO).await.unwrap()
}

pub fn success(task: &rxon::TaskPayload, status: &str, data: Value) -> rxon::TaskResult {
    serde_json::from_value(json!({
        "job_id": task.job_id, "task_id": task.task_id, "status": status, "data": data
    }))
    .unwrap()
}

pub fn failure(task: &rxon::TaskPayload, code: &str, message: &str) -> rxon::TaskResult {
    serde_json::from_value(json!({
        "job_id": task.job_id, "task_id": task.task_id, "status": "failure",
        "error": {"code": code, "message": message}
    }))
    .unwrap()
}

/// Lets spawned tasks (writer, timers) run.
pub async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}
