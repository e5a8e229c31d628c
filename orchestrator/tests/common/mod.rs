//! Helpers shared by the orchestrator's integration tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use orchestrator::blueprint;
use orchestrator::engine::{Engine, EngineSettings, NewJob};
use orchestrator::job::Job;
use orchestrator::storage::Storage;
use orchestrator::storage::memory::MemoryStorage;
use serde_json::{Value, json};
use uuid::Uuid;

pub const HEAD: &str = "name = \"flow\"\napi_endpoint = \"/jobs/test\"\napi_version = \"v1\"\n";

pub async fn engine_with(states: &str, settings: EngineSettings) -> Engine {
    engine_on(states, settings, Arc::new(MemoryStorage::default())).await
}

pub async fn engine_on(
    states: &str,
    settings: EngineSettings,
    storage: Arc<dyn Storage>,
) -> Engine {
    let bp = blueprint::parse("flow.toml", &format!("{HEAD}{states}")).unwrap();
    Engine::start(vec![bp], storage, settings).await.unwrap()
}

pub async fn engine(states: &str) -> Engine {
    engine_with(states, EngineSettings::default()).await
}

pub async fn create(engine: &Engine, data: Value) -> Uuid {
    engine
        .create_job(NewJob {
            blueprint: "flow".into(),
            owner: "default".into(),
            initial_data: data.as_object().cloned().unwrap_or_default(),
            ..NewJob::default()
        })
        .await
        .unwrap()
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
