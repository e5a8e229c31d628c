//! Real wasmtime, real components built from `plugins/`: what a task can and
//! cannot do, and how each way of ending is reported.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plugin_fixtures::{CHAOS_TASK, ECHO_TASK, FAILING_TASK};
use serde_json::json;
use tokio::sync::watch;
use worker_host::outcome::TaskOutcome;
use worker_host::plugin_store::{Plugin, PluginError, PluginLoader};
use worker_host::sandbox::{RunOptions, Sandbox, SandboxConfig, Task};

/// What plugins return or declare, when they are hostile.
#[path = "sandbox/hostile.rs"]
mod hostile;

/// What plugin manifests are granted under a policy.
#[path = "sandbox/grants.rs"]
mod grants;

/// Outbound HTTP under a grant.
#[path = "sandbox/http.rs"]
mod http;

fn engine(timeout: Duration, memory_mb: usize) -> Sandbox {
    Sandbox::new(SandboxConfig {
        task_timeout: timeout,
        memory_limit: memory_mb << 20,
        max_concurrent_tasks: 5,
        ..SandboxConfig::default()
    })
    .unwrap()
}

async fn load(engine: &Sandbox, path: &str) -> Plugin {
    PluginLoader::new(engine.clone())
        .unwrap()
        .load_file(Path::new(path))
        .await
        .unwrap()
}

async fn run(
    engine: &Sandbox,
    plugin: &Plugin,
    task_type: &str,
    params: serde_json::Value,
) -> TaskOutcome {
    let input = Task {
        task_id: "t-1".into(),
        job_id: "j-1".into(),
        task_type: task_type.into(),
        params: params.to_string(),
    };
    plugin.run(engine, &input, RunOptions::default()).await
}

fn failure(outcome: &TaskOutcome) -> (&str, &str) {
    match outcome {
        TaskOutcome::Failed { code, message, .. } => (code, message),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn echo_repeats_the_message() {
    let engine = engine(Duration::from_secs(10), 64);
    let plugin = load(&engine, ECHO_TASK).await;
    assert_eq!(plugin.skills.len(), 1);
    assert_eq!(plugin.skills[0].name, "echo_task");
    assert!(plugin.skills[0].input_schema.is_some());
    let outcome = run(
        &engine,
        &plugin,
        "echo_task",
        json!({"message": "Hello World", "multiply": 3}),
    )
    .await;
    let TaskOutcome::Completed { status, data } = outcome else {
        panic!("echo failed: {outcome:?}")
    };
    assert_eq!(status, "success");
    assert_eq!(
        data["processed_message"],
        "Hello World Hello World Hello World"
    );
    assert_eq!(data["original_message"], "Hello World");
    assert_eq!(data["multiplied_by"], 3);
}

#[tokio::test]
async fn failing_task_reports_a_transient_error() {
    let engine = engine(Duration::from_secs(10), 64);
    let plugin = load(&engine, FAILING_TASK).await;
    let outcome = run(&engine, &plugin, "failing_task", json!({})).await;
    assert_eq!(
        failure(&outcome),
        ("TRANSIENT_ERROR", "Intentional failure for testing")
    );
}

#[tokio::test]
async fn custom_status_is_passed_through() {
    let engine = engine(Duration::from_secs(10), 64);
    let plugin = load(&engine, CHAOS_TASK).await;
    let custom = plugin
        .skills
        .iter()
        .find(|s| s.name == "custom_status")
        .unwrap();
    assert_eq!(custom.output_statuses, vec!["needs_review".to_string()]);
    let outcome = run(&engine, &plugin, "custom_status", json!({"doc": 7})).await;
    let TaskOutcome::Completed { status, data } = outcome else {
        panic!("custom status failed: {outcome:?}")
    };
    assert_eq!(status, "needs_review");
    assert_eq!(data["params"]["doc"], 7);
}

#[tokio::test]
async fn invalid_params_are_an_invalid_input_error() {
    let engine = engine(Duration::from_secs(10), 64);
    let plugin = load(&engine, ECHO_TASK).await;
    for params in [
        json!({"multiply": 2}),
        json!({"message": "x", "multiply": "three"}),
        json!({"message": "x", "multiply": 1_000_000}),
    ] {
        let outcome = run(&engine, &plugin, "echo_task", params.clone()).await;
        let (code, message) = failure(&outcome);
        assert_eq!(code, "INVALID_INPUT_ERROR", "{params}: {message}");
        assert!(message.contains("echo_task params"), "{message}");
    }
}

#[tokio::test]
async fn an_endless_loop_is_stopped_at_its_timeout_and_the_engine_goes_on() {
    let engine = engine(Duration::from_millis(500), 64);
    let chaos = load(&engine, CHAOS_TASK).await;
    let outcome = run(&engine, &chaos, "spin_forever", json!({})).await;
    let (code, message) = failure(&outcome);
    assert_eq!(code, "TIMEOUT_ERROR");
    assert!(message.contains("time limit of 500 ms"), "{message}");
    // A sleeping guest (blocked in a host call) is bounded too.
    let outcome = run(&engine, &chaos, "sleep", json!({"ms": 60_000})).await;
    assert_eq!(failure(&outcome).0, "TIMEOUT_ERROR");
    // The same engine still serves healthy tasks.
    let echo = load(&engine, ECHO_TASK).await;
    let outcome = run(
        &engine,
        &echo,
        "echo_task",
        json!({"message": "still alive"}),
    )
    .await;
    assert!(
        matches!(outcome, TaskOutcome::Completed { .. }),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn unbounded_allocation_is_stopped_at_the_memory_cap() {
    let engine = engine(Duration::from_secs(20), 32);
    let chaos = load(&engine, CHAOS_TASK).await;
    let outcome = run(&engine, &chaos, "alloc_forever", json!({})).await;
    let (code, message) = failure(&outcome);
    assert_eq!(code, "RESOURCE_EXHAUSTED_ERROR");
    assert!(message.contains("memory limit of 32 MiB"), "{message}");
}

#[tokio::test]
async fn a_panic_is_a_permanent_error_with_the_panic_message() {
    let engine = engine(Duration::from_secs(10), 64);
    let chaos = load(&engine, CHAOS_TASK).await;
    let outcome = run(&engine, &chaos, "panic", json!({})).await;
    let (code, message) = failure(&outcome);
    assert_eq!(code, "PERMANENT_ERROR");
    assert!(
        message.contains("chaos_task was asked to panic"),
        "{message}"
    );
}

#[tokio::test]
async fn the_sandbox_grants_no_files_no_environment_and_no_network() {
    // Something that certainly exists on the host, and an env var that is set.
    let host_file = std::env::current_exe().unwrap();
    assert!(std::env::var("PATH").is_ok());
    let engine = engine(Duration::from_secs(10), 64);
    let chaos = load(&engine, CHAOS_TASK).await;

    let outcome = run(
        &engine,
        &chaos,
        "read_host_file",
        json!({"path": host_file}),
    )
    .await;
    let TaskOutcome::Completed { data, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(data["read"], false, "{data:?}");

    let outcome = run(&engine, &chaos, "read_env", json!({})).await;
    let TaskOutcome::Completed { data, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(data["vars"], json!([]));
    assert_eq!(data["home"], json!(null));

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let outcome = run(&engine, &chaos, "connect", json!({"addr": addr})).await;
    let TaskOutcome::Completed { data, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(data["connected"], false, "{data:?}");
}

#[tokio::test]
async fn every_task_gets_a_fresh_instance() {
    let engine = engine(Duration::from_secs(10), 64);
    let chaos = load(&engine, CHAOS_TASK).await;
    for _ in 0..3 {
        let outcome = run(&engine, &chaos, "counter", json!({})).await;
        let TaskOutcome::Completed { data, .. } = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(data["count"], 1, "a global survived from an earlier task");
    }
}

/// Five tasks that each sleep 1 s on a single-threaded runtime: if sleeping
/// held the thread they would run one after another. Every task must have
/// started (reported progress) before the first one finished.
#[tokio::test(flavor = "current_thread")]
async fn sleeping_tasks_overlap_on_one_thread() {
    let engine = engine(Duration::from_secs(30), 64);
    let echo = Arc::new(load(&engine, ECHO_TASK).await);
    let mut handles = Vec::new();
    for i in 0..5 {
        let (engine, echo) = (engine.clone(), echo.clone());
        handles.push(tokio::spawn(async move {
            let (tx, mut rx) = watch::channel(None);
            let started = tokio::spawn(async move {
                rx.changed().await.ok();
                Instant::now()
            });
            let input = Task {
                task_id: format!("t-{i}"),
                job_id: "j".into(),
                task_type: "echo_task".into(),
                params: json!({"message": "m", "work_ms": 1000}).to_string(),
            };
            let options = RunOptions {
                progress: Some(tx),
                ..RunOptions::default()
            };
            let outcome = echo.run(&engine, &input, options).await;
            let ended = Instant::now();
            assert!(
                matches!(outcome, TaskOutcome::Completed { .. }),
                "{outcome:?}"
            );
            (started.await.unwrap(), ended)
        }));
    }
    let mut spans = Vec::new();
    for h in handles {
        spans.push(h.await.unwrap());
    }
    let last_start = spans.iter().map(|s| s.0).max().unwrap();
    let first_end = spans.iter().map(|s| s.1).min().unwrap();
    assert!(
        last_start < first_end,
        "tasks ran one after another instead of overlapping"
    );
}

#[tokio::test]
async fn broken_files_are_skipped_with_a_clear_reason() {
    let engine = engine(Duration::from_secs(10), 64);
    let loader = PluginLoader::new(engine.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(ECHO_TASK, dir.path().join("echo_task.wasm")).unwrap();
    std::fs::write(dir.path().join("garbage.wasm"), b"this is not wasm at all").unwrap();
    // A valid core module (the smallest one): not a component.
    std::fs::write(dir.path().join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    // A component header followed by garbage.
    std::fs::write(
        dir.path().join("corrupt.wasm"),
        b"\0asm\x0d\0\x01\0\xff\xff\xff",
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();

    let set = loader
        .load_dir(dir.path(), &Default::default())
        .await
        .unwrap();
    assert_eq!(set.skill_names(), vec!["echo_task".to_string()]);

    let err = loader
        .load_file(&dir.path().join("garbage.wasm"))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, PluginError::NotWasm { .. }));
    assert!(err.to_string().contains("not a WebAssembly file"), "{err}");
    let err = loader
        .load_file(&dir.path().join("core.wasm"))
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("core WebAssembly module, not a component"),
        "{err}"
    );
    let err = loader
        .load_file(&dir.path().join("corrupt.wasm"))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, PluginError::Invalid { .. }), "{err}");
    let err = loader
        .load_file(&dir.path().join("missing.wasm"))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("cannot read"), "{err}");
}
