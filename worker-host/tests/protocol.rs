//! The worker's side of the RXON protocol against a real HTTP server run by the
//! test: what it sends, how it signs, how it reacts to answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use worker_host::client::OrchestratorClient;
use worker_host::plugin_store::PluginLoader;
use worker_host::sandbox::{Sandbox, SandboxConfig};
use worker_host::worker::{Worker, WorkerSettings};

const TOKEN: &str = "test-worker-token";
const WORKER: &str = "proto-worker";

#[derive(Default)]
struct Recorded {
    registrations: Vec<(HeaderMap, Value)>,
    heartbeats: Vec<Value>,
    results: Vec<Value>,
    polls: usize,
    tasks: Vec<Value>,
    /// Answer the next heartbeat with 404, as an orchestrator that forgot us.
    forget_next_heartbeat: bool,
}

type Shared = Arc<Mutex<Recorded>>;

async fn register(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    s.lock().unwrap().registrations.push((headers, body.0));
    axum::Json(json!({"status": "registered", "version": "1.0b17"})).into_response()
}

async fn heartbeat(
    State(s): State<Shared>,
    Path(_id): Path<String>,
    body: axum::Json<Value>,
) -> Response {
    let mut s = s.lock().unwrap();
    s.heartbeats.push(body.0);
    if std::mem::take(&mut s.forget_next_heartbeat) {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "Worker not found"})),
        )
            .into_response();
    }
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn next(State(s): State<Shared>, Path(_id): Path<String>) -> Response {
    let task = {
        let mut s = s.lock().unwrap();
        s.polls += 1;
        if s.tasks.is_empty() {
            None
        } else {
            Some(s.tasks.remove(0))
        }
    };
    match task {
        Some(task) => axum::Json(task).into_response(),
        None => {
            tokio::time::sleep(Duration::from_millis(50)).await;
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

async fn result(State(s): State<Shared>, body: axum::Json<Value>) -> Response {
    s.lock().unwrap().results.push(body.0);
    axum::Json(json!({"status": "accepted", "transition": "success_transition"})).into_response()
}

async fn start_server(state: Shared) -> String {
    let app = Router::new()
        .route("/_worker/workers/register", post(register))
        .route("/_worker/workers/{id}", patch(heartbeat))
        .route("/_worker/workers/{id}/tasks/next", get(next))
        .route("/_worker/tasks/result", post(result))
        .route(
            "/_worker/events",
            post(|| async { axum::Json(json!({"status": "event_accepted"})) }),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

async fn start_worker(
    url: &str,
    heartbeat: Duration,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let engine = Sandbox::new(SandboxConfig::default()).unwrap();
    let loader = PluginLoader::new(engine.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for p in [
        plugin_fixtures::ECHO_TASK,
        plugin_fixtures::FAILING_TASK,
        plugin_fixtures::CHAOS_TASK,
    ] {
        let name = std::path::Path::new(p).file_name().unwrap();
        std::fs::copy(p, dir.path().join(name)).unwrap();
    }
    let plugins = loader
        .load_dir(dir.path(), &Default::default())
        .await
        .unwrap();
    let client = OrchestratorClient::new(url, WORKER, TOKEN).unwrap();
    let settings = WorkerSettings {
        worker_type: "test-worker".into(),
        heartbeat_interval: heartbeat,
        poll_timeout: Duration::from_secs(1),
        min_backoff: Duration::from_millis(50),
        ..WorkerSettings::default()
    };
    let worker = Worker::new(client, engine, plugins, settings);
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let handle = tokio::spawn(async move { worker.run(token).await.unwrap() });
    (shutdown, handle)
}

async fn wait_for(state: &Shared, what: &str, cond: impl Fn(&Recorded) -> bool) {
    for _ in 0..200 {
        if cond(&state.lock().unwrap()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn assert_signed(body: &Value) {
    let ts = body["timestamp"].as_i64().expect("integer timestamp");
    let now = worker_host::client::unix_now();
    assert!((now - ts).abs() <= 5, "timestamp {ts} is not now ({now})");
    assert_eq!(body["security"]["signer_id"], WORKER);
    rxon::verify_message(body, TOKEN, &[]).expect("signature verifies with the worker token");
}

#[tokio::test]
async fn registers_signed_with_its_skills_heartbeats_and_reports_results() {
    let state: Shared = Arc::default();
    state.lock().unwrap().tasks = vec![
        json!({"job_id": "j1", "task_id": "task-1", "type": "echo_task", "params": {"message": "hi", "multiply": 2}, "tracing_context": {}}),
        json!({"job_id": "j2", "task_id": "task-2", "type": "failing_task", "params": {}, "tracing_context": {}}),
        json!({"job_id": "j3", "task_id": "task-3", "type": "custom_status", "params": {}, "tracing_context": {}}),
        json!({"job_id": "j4", "task_id": "task-4", "type": "no_such_task", "params": {}}),
    ];
    let url = start_server(state.clone()).await;
    let (shutdown, handle) = start_worker(&url, Duration::from_millis(200)).await;
    wait_for(&state, "3 results", |s| s.results.len() == 3).await;
    wait_for(&state, "3 heartbeats", |s| s.heartbeats.len() >= 3).await;

    {
        let s = state.lock().unwrap();
        let (headers, reg) = &s.registrations[0];
        assert_eq!(headers["x-worker-token"], TOKEN);
        assert_eq!(headers["x-worker-id"], WORKER);
        assert_eq!(headers["x-rxon-version"], "1.0b17");
        assert_signed(reg);
        assert_eq!(reg["worker_id"], WORKER);
        assert_eq!(reg["worker_type"], "test-worker");
        let skills: Vec<&str> = reg["supported_skills"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert!(
            skills.contains(&"echo_task") && skills.contains(&"failing_task"),
            "{skills:?}"
        );
        let echo = reg["supported_skills"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "echo_task")
            .unwrap();
        assert_eq!(echo["type"], "echo_task");
        assert_eq!(echo["input_schema"]["type"], "object");
        assert!(reg["capabilities"]["hostname"].is_string());

        for hb in &s.heartbeats {
            assert_signed(hb);
            assert_eq!(hb["worker_id"], WORKER);
            assert!(
                ["idle", "busy"].contains(&hb["status"].as_str().unwrap()),
                "{hb}"
            );
        }
        // Every signed message differs (replay protection rejects duplicates).
        let nonces: std::collections::HashSet<&str> = s
            .heartbeats
            .iter()
            .map(|h| h["nonce"].as_str().unwrap())
            .collect();
        assert_eq!(nonces.len(), s.heartbeats.len());

        let by_task = |id: &str| {
            s.results
                .iter()
                .find(|r| r["task_id"] == id)
                .unwrap()
                .clone()
        };
        let ok = by_task("task-1");
        assert_signed(&ok);
        assert_eq!(ok["job_id"], "j1");
        assert_eq!(ok["worker_id"], WORKER);
        assert_eq!(ok["status"], "success");
        assert_eq!(ok["data"]["processed_message"], "hi hi");
        assert!(ok.get("error").is_none());

        let failed = by_task("task-2");
        assert_eq!(failed["status"], "failure");
        assert_eq!(
            failed["error"],
            json!({"code": "TRANSIENT_ERROR", "message": "Intentional failure for testing"})
        );
        assert_eq!(failed["data"], json!({}));

        let custom = by_task("task-3");
        assert_eq!(custom["status"], "needs_review");
        assert_eq!(custom["data"]["reviewed"], false);

        // A task type it does not serve is neither run nor failed: it is
        // left unlisted, for the orchestrator to hand to another worker.
        assert!(s.results.iter().all(|r| r["task_id"] != "task-4"));
        assert!(s.heartbeats.iter().all(|h| {
            !h["current_tasks"]
                .as_array()
                .unwrap()
                .contains(&json!("task-4"))
        }));
        // 204s were answered by polling again, not by giving up.
        assert!(s.polls > 4, "polls: {}", s.polls);
    }

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .unwrap()
        .unwrap();
    let s = state.lock().unwrap();
    assert_eq!(
        s.heartbeats.last().unwrap()["status"],
        "offline",
        "goodbye heartbeat"
    );
}

#[tokio::test]
async fn registers_again_when_the_orchestrator_forgets_it() {
    let state: Shared = Arc::default();
    let url = start_server(state.clone()).await;
    let (shutdown, handle) = start_worker(&url, Duration::from_millis(100)).await;
    wait_for(&state, "registration", |s| s.registrations.len() == 1).await;
    state.lock().unwrap().forget_next_heartbeat = true;
    wait_for(&state, "second registration", |s| {
        s.registrations.len() == 2
    })
    .await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn keeps_retrying_until_the_orchestrator_comes_up() {
    // Reserve a port, start the worker against it, then start the server there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let url = format!("http://{addr}");
    let (shutdown, handle) = start_worker(&url, Duration::from_millis(100)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !handle.is_finished(),
        "the worker gave up while the orchestrator was down"
    );

    let state: Shared = Arc::default();
    let app_state = state.clone();
    let app = Router::new()
        .route("/_worker/workers/register", post(register))
        .route("/_worker/workers/{id}", patch(heartbeat))
        .route("/_worker/workers/{id}/tasks/next", get(next))
        .with_state(app_state);
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    wait_for(&state, "registration after start", |s| {
        !s.registrations.is_empty()
    })
    .await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .unwrap()
        .unwrap();
}
