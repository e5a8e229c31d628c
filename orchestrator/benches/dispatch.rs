//! The orchestrator's dispatch path in-process: create a job → a worker polls
//! the task → submits the result → the job is finished. No HTTP, memory and
//! SQLite storage.
//!
//! Run: `cargo bench -p orchestrator --bench dispatch`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use orchestrator::blueprint;
use orchestrator::engine::{Engine, EngineSettings, NewJob, Store};
use orchestrator::storage::Storage;
use orchestrator::storage::memory::MemoryStorage;
use orchestrator::storage::sqlite::SqliteStorage;
use serde_json::json;

const FLOW: &str = r#"
name = "test_flow"
api_endpoint = "/jobs/test"
api_version = "v1"
[states.start]
start = true
dispatch.task = "echo_task"
dispatch.params.message = "initial.message | default('Hello from Orchestrator!')"
dispatch.params.multiply = "initial.multiply | default(2)"
dispatch.on = { success = "completed", failure = "failed" }
[states.completed]
end = "finished"
[states.failed]
end = "failed"
"#;

async fn one_job(engine: &Engine) {
    engine
        .create_job(NewJob {
            blueprint: "test_flow".into(),
            owner: "default".into(),
            initial_data: json!({"message": "Hello World", "multiply": 3})
                .as_object()
                .cloned()
                .unwrap(),
            ..NewJob::default()
        })
        .await
        .unwrap();
    let task = engine
        .next_task("w", Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    let result: rxon::TaskResult = serde_json::from_value(json!({
        "job_id": task.job_id, "task_id": task.task_id,
        "data": {"processed_message": "Hello World Hello World Hello World"}
    }))
    .unwrap();
    let r = engine.submit_result("w", result).await.unwrap();
    assert_eq!(r.status, "accepted");
}

fn dispatch_path(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let backends: Vec<(&str, Arc<dyn Storage>)> = vec![
        ("memory", Arc::new(MemoryStorage::default())),
        (
            "sqlite",
            Arc::new(SqliteStorage::open(&dir.path().join("bench.db")).unwrap()),
        ),
    ];
    let mut group = c.benchmark_group("create → poll → result");
    for (name, storage) in backends {
        let engine = rt.block_on(async {
            let bp = blueprint::parse("test_flow.toml", FLOW).unwrap();
            let engine = Engine::start(vec![bp], Store::Local(storage), EngineSettings::default())
                .await
                .unwrap();
            let reg: rxon::WorkerRegistration = serde_json::from_value(
                json!({"worker_id": "w", "supported_skills": [{"name": "echo_task"}]}),
            )
            .unwrap();
            engine.register_worker(&reg).await.expect("registered");
            engine
        });
        group.bench_function(name, |b| b.to_async(&rt).iter(|| one_job(&engine)));
    }
    group.finish();
}

criterion_group!(benches, dispatch_path);
criterion_main!(benches);
