//! The HTTP API over a real socket (and a few requests in-process): every
//! endpoint's success and error paths.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use orchestrator::api::{self, AppState, auth::Auth};
use orchestrator::engine::{Engine, EngineSettings};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tower::ServiceExt;

const CLIENT: &str = "ctok";
const OTHER_CLIENT: &str = "ctok2";
const WORKER_TOKEN: &str = "wtok";
const FLOW: &str = r#"
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

struct Server {
    base: String,
    http: reqwest::Client,
    app: axum::Router,
}

async fn server() -> Server {
    server_with_body_limit(4096).await
}

async fn server_with_body_limit(max_body: usize) -> Server {
    // The webhook test's receiver is on loopback, which the egress rule
    // refuses unless the operator allows it.
    let settings = EngineSettings {
        webhook_allowed_hosts: vec!["127.0.0.1".into()],
        ..EngineSettings::default()
    };
    let engine: Engine = common::engine_with(FLOW, settings).await;
    let clients = HashMap::from([
        (CLIENT.to_string(), "alice".to_string()),
        (OTHER_CLIENT.to_string(), "bob".to_string()),
    ]);
    let auth = Auth::new(
        clients,
        Some(WORKER_TOKEN.into()),
        HashMap::from([("vip".to_string(), "vip-token".to_string())]),
        true,
    );
    let app = api::router(AppState::new(
        engine,
        auth,
        max_body,
        api::throttle::AuthFailures::new(api::throttle::DEFAULT_LIMIT, Default::default()),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(api::serve(listener, app.clone(), std::future::pending()));
    Server {
        base,
        http: reqwest::Client::new(),
        app,
    }
}

impl Server {
    async fn client(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("X-Client-Token", t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        assert_eq!(resp.headers()["x-rxon-version"], "1.0b17");
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn create(&self, body: Value) -> String {
        let (status, v) = self
            .client(
                reqwest::Method::POST,
                "/api/v1/jobs/test",
                Some(CLIENT),
                Some(&body.to_string()),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{v}");
        v["job_id"].as_str().unwrap().to_string()
    }

    /// A worker request, signed unless `sign` is false.
    async fn worker(
        &self,
        method: reqwest::Method,
        path: &str,
        worker: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("X-Worker-Token", token)
            .header("X-Worker-ID", worker);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn register(&self, worker: &str, token: &str) -> (StatusCode, Value) {
        let mut body = json!({"worker_id": worker, "worker_type": "t", "supported_skills": [{"name": "echo_task"}], "nonce": uuid::Uuid::new_v4().to_string()});
        rxon::seal(&mut body, worker, token, chrono::Utc::now().timestamp());
        self.worker(
            reqwest::Method::POST,
            "/_worker/workers/register",
            worker,
            token,
            Some(body),
        )
        .await
    }
}

fn signed(mut body: Value, worker: &str, token: &str) -> Value {
    body["nonce"] = json!(uuid::Uuid::new_v4().to_string());
    rxon::seal(&mut body, worker, token, chrono::Utc::now().timestamp());
    body
}

use reqwest::Method;

#[tokio::test]
async fn a_job_too_large_to_answer_under_the_engine_lock_is_answered_whole() {
    let s = server_with_body_limit(1 << 20).await;
    // Small: answered from memory under the lock; large (past 64 KiB): copied out first.
    for size in [10, 200 << 10] {
        let message = "x".repeat(size);
        let id = s.create(json!({"message": message})).await;
        let (status, job) = s
            .client(
                Method::GET,
                &format!("/api/v1/jobs/{id}"),
                Some(CLIENT),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            job["initial_data"]["message"].as_str().map(str::len),
            Some(size)
        );
        assert_eq!(job["status"], "waiting_for_worker");
        assert_eq!(
            job["waiting_reason"],
            "no registered worker offers task type echo_task"
        );
        // Someone else's job is not found, whatever its size.
        let (status, v) = s
            .client(
                Method::GET,
                &format!("/api/v1/jobs/{id}"),
                Some(OTHER_CLIENT),
                None,
            )
            .await;
        assert_eq!(
            (status, v),
            (StatusCode::NOT_FOUND, json!({"error": "Job not found"}))
        );
    }
}

#[tokio::test]
async fn create_and_read_jobs_with_either_header_and_either_body_shape() {
    let s = server().await;
    // Flat body + the old header, as the scenario sends it.
    let resp = s
        .http
        .post(format!("{}/api/v1/jobs/test", s.base))
        .header("X-Avtomatika-Token", CLIENT)
        .body(r#"{"message": "Hello World", "multiply": 3}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["status"], "accepted");
    let flat = v["job_id"].as_str().unwrap().to_string();
    let (status, job) = s
        .client(
            Method::GET,
            &format!("/api/v1/jobs/{flat}"),
            Some(CLIENT),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        job["initial_data"],
        json!({"message": "Hello World", "multiply": 3})
    );
    assert_eq!(job["status"], "waiting_for_worker");
    assert_eq!(job["current_state"], "start");
    assert_eq!(
        job["waiting_reason"],
        "no registered worker offers task type echo_task"
    );
    // Structured body + the current header, with options.
    let structured = s
        .create(
            json!({"initial_data": {"message": "x"}, "dispatch_timeout": 30, "result_timeout": 10}),
        )
        .await;
    let (_, job) = s
        .client(
            Method::GET,
            &format!("/api/v1/jobs/{structured}"),
            Some(CLIENT),
            None,
        )
        .await;
    assert_eq!(job["initial_data"], json!({"message": "x"}));
    // Listing, filtering, pagination.
    let (status, list) = s
        .client(
            Method::GET,
            "/api/v1/jobs?status=waiting_for_worker&limit=1",
            Some(CLIENT),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
    let (status, list) = s
        .client(
            Method::GET,
            "/api/v1/jobs?status=finished",
            Some(CLIENT),
            None,
        )
        .await;
    assert_eq!(
        (status, list["jobs"].as_array().unwrap().len()),
        (StatusCode::OK, 0)
    );
    let (status, err) = s
        .client(Method::GET, "/api/v1/jobs?status=nope", Some(CLIENT), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(err["error"].as_str().unwrap().contains("unknown status"));
    let (status, _) = s
        .client(Method::GET, "/api/v1/jobs?limit=x", Some(CLIENT), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Another client sees none of it.
    let (status, _) = s
        .client(
            Method::GET,
            &format!("/api/v1/jobs/{flat}"),
            Some(OTHER_CLIENT),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = s
        .client(Method::GET, "/api/v1/jobs", Some(OTHER_CLIENT), None)
        .await;
    assert_eq!(list["jobs"], json!([]));
    // Cancel, then cancel again; history tells the story.
    let (status, v) = s
        .client(
            Method::POST,
            &format!("/api/v1/jobs/{flat}/cancel"),
            Some(CLIENT),
            None,
        )
        .await;
    assert_eq!(
        (status, v["status"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    let (status, v) = s
        .client(
            Method::POST,
            &format!("/api/v1/jobs/{flat}/cancel"),
            Some(CLIENT),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    let (status, v) = s
        .client(
            Method::GET,
            &format!("/api/v1/jobs/{flat}/history"),
            Some(CLIENT),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let kinds: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["created", "task_queued", "cancelled"]);
}

#[tokio::test]
async fn client_errors_are_json_with_the_right_status() {
    let s = server().await;
    type Case<'a> = (
        Method,
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        StatusCode,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/api/v1/jobs/test",
            None,
            Some("{}"),
            StatusCode::UNAUTHORIZED,
            "Missing X-Client-Token header",
        ),
        (
            Method::POST,
            "/api/v1/jobs/test",
            Some("nope"),
            Some("{}"),
            StatusCode::UNAUTHORIZED,
            "Unauthorized: Invalid token",
        ),
        (
            Method::POST,
            "/api/v1/jobs/test",
            Some(CLIENT),
            Some("{not json"),
            StatusCode::BAD_REQUEST,
            "Invalid JSON body",
        ),
        (
            Method::POST,
            "/api/v1/jobs/test",
            Some(CLIENT),
            Some("[1,2]"),
            StatusCode::BAD_REQUEST,
            "Invalid JSON body: expected a JSON object",
        ),
        (
            Method::POST,
            "/api/v1/jobs/test",
            Some(CLIENT),
            Some(r#"{"initial_data": 5}"#),
            StatusCode::BAD_REQUEST,
            "'initial_data' must be a JSON object",
        ),
        (
            Method::POST,
            "/api/v1/jobs/test",
            Some(CLIENT),
            Some(r#"{"initial_data": {}, "dispatch_timeout": -1}"#),
            StatusCode::BAD_REQUEST,
            "'dispatch_timeout' must be a positive number of seconds",
        ),
        (
            Method::POST,
            "/api/v1/jobs/test",
            Some(CLIENT),
            Some(r#"{"initial_data": {}, "metadata": [1]}"#),
            StatusCode::BAD_REQUEST,
            "'metadata' must be a JSON object",
        ),
        (
            Method::POST,
            "/api/v1/jobs/test",
            Some(CLIENT),
            Some(r#"{"initial_data": {}, "policy": "strict"}"#),
            StatusCode::BAD_REQUEST,
            "'policy' must be a dictionary",
        ),
        (
            Method::POST,
            "/api/v1/jobs/test",
            Some(CLIENT),
            Some(r#"{"initial_data": {}, "policy": {"allowed_skills": []}}"#),
            StatusCode::BAD_REQUEST,
            "'policy.allowed_skills' must be a non-empty list of strings",
        ),
        (
            Method::POST,
            "/api/v1/jobs/test",
            Some(CLIENT),
            Some(r#"{"initial_data": {}, "max_transitions": 101}"#),
            StatusCode::BAD_REQUEST,
            "'max_transitions' must be an integer between 1 and 100",
        ),
        (
            Method::GET,
            "/api/v1/jobs/00000000-0000-0000-0000-000000000000",
            Some(CLIENT),
            None,
            StatusCode::NOT_FOUND,
            "Job not found",
        ),
        (
            Method::GET,
            "/api/v1/jobs/not-a-uuid",
            Some(CLIENT),
            None,
            StatusCode::NOT_FOUND,
            "Job not found",
        ),
        (
            Method::POST,
            "/api/v1/jobs/unknown-blueprint",
            Some(CLIENT),
            Some("{}"),
            StatusCode::NOT_FOUND,
            "Not found: no blueprint serves POST /api/v1/jobs/unknown-blueprint",
        ),
        (
            Method::DELETE,
            "/api/v1/jobs/test",
            Some(CLIENT),
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "Method DELETE is not allowed",
        ),
        (
            Method::GET,
            "/api/v1/workers",
            None,
            None,
            StatusCode::UNAUTHORIZED,
            "Missing X-Client-Token header",
        ),
    ];
    for (method, path, token, body, status, message) in cases {
        let (got, v) = s.client(method.clone(), path, token, body).await;
        assert_eq!(got, status, "{method} {path}: {v}");
        assert!(
            v["error"].as_str().unwrap_or_default().starts_with(message),
            "{method} {path}: {v}"
        );
    }
    let big = format!(r#"{{"message": "{}"}}"#, "x".repeat(10_000));
    let (got, v) = s
        .client(Method::POST, "/api/v1/jobs/test", Some(CLIENT), Some(&big))
        .await;
    assert_eq!(got, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert!(v["error"].is_string());
}

#[tokio::test]
async fn in_process_requests_get_the_same_answers() {
    let s = server().await;
    let resp = s
        .app
        .clone()
        .oneshot(
            Request::post("/api/v1/jobs/test")
                .header("X-Client-Token", CLIENT)
                .body(Body::from("{oops"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("Invalid JSON body")
    );
    let resp = s
        .app
        .clone()
        .oneshot(Request::get("/_public/status").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn worker_auth_and_message_signatures_are_enforced() {
    let s = server().await;
    // Unsigned, wrong token, someone else's token, bad signature, stale, replayed.
    let bare = json!({"worker_id": "w1", "supported_skills": [{"name": "echo_task"}], "timestamp": chrono::Utc::now().timestamp()});
    let (st, v) = s
        .worker(
            Method::POST,
            "/_worker/workers/register",
            "w1",
            WORKER_TOKEN,
            Some(bare.clone()),
        )
        .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (
            StatusCode::FORBIDDEN,
            Some("Missing required security context")
        )
    );
    let (st, v) = s.register("w1", "wrong").await;
    assert_eq!(
        (st, v["error"].as_str()),
        (
            StatusCode::FORBIDDEN,
            Some("Unauthorized: No valid token found")
        )
    );
    let (st, v) = s.register("vip", WORKER_TOKEN).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (
            StatusCode::FORBIDDEN,
            Some("Unauthorized: Invalid individual worker token")
        )
    );
    let (st, _) = s.register("vip", "vip-token").await;
    assert_eq!(st, StatusCode::OK);
    let mut forged = signed(bare.clone(), "w1", "not-the-token");
    let (st, v) = s
        .worker(
            Method::POST,
            "/_worker/workers/register",
            "w1",
            WORKER_TOKEN,
            Some(forged.clone()),
        )
        .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("Invalid message signature"))
    );
    forged = json!({"worker_id": "w1", "supported_skills": [], "timestamp": chrono::Utc::now().timestamp() - 120});
    rxon::seal(&mut forged, "w1", WORKER_TOKEN, 0);
    let (st, v) = s
        .worker(
            Method::POST,
            "/_worker/workers/register",
            "w1",
            WORKER_TOKEN,
            Some(forged),
        )
        .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (
            StatusCode::FORBIDDEN,
            Some("Message timestamp expired (replay protection)")
        )
    );
    let good = signed(bare, "w1", WORKER_TOKEN);
    let (st, v) = s
        .worker(
            Method::POST,
            "/_worker/workers/register",
            "w1",
            WORKER_TOKEN,
            Some(good.clone()),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"status": "registered", "version": "1.0b17"}));
    let (st, v) = s
        .worker(
            Method::POST,
            "/_worker/workers/register",
            "w1",
            WORKER_TOKEN,
            Some(good),
        )
        .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (
            StatusCode::FORBIDDEN,
            Some("Duplicate message detected (replay attack)")
        )
    );
    // Bad JSON and bad shapes are 400.
    let resp = s
        .http
        .post(format!("{}/_worker/tasks/result", s.base))
        .header("X-Worker-Token", WORKER_TOKEN)
        .header("X-Worker-ID", "w1")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let (st, v) = s
        .worker(
            Method::POST,
            "/_worker/tasks/result",
            "w1",
            WORKER_TOKEN,
            Some(signed(json!({"task_id": "t"}), "w1", WORKER_TOKEN)),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("Invalid TaskResult payload"),
        "{v}"
    );
    // Results on behalf of another worker are refused.
    let (st, _) = s
        .worker(
            Method::POST,
            "/_worker/tasks/result",
            "w1",
            WORKER_TOKEN,
            Some(signed(
                json!({"job_id": "j", "task_id": "t", "worker_id": "w2"}),
                "w1",
                WORKER_TOKEN,
            )),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // Unknown workers are told to register.
    let (st, v) = s
        .worker(
            Method::PATCH,
            "/_worker/workers/ghost",
            "ghost",
            WORKER_TOKEN,
            Some(signed(
                json!({"worker_id": "ghost", "status": "idle"}),
                "ghost",
                WORKER_TOKEN,
            )),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(v["error"].as_str().unwrap().contains("Worker not found"));
    let (st, _) = s
        .worker(
            Method::GET,
            "/_worker/workers/ghost/tasks/next?timeout=0",
            "ghost",
            WORKER_TOKEN,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_worker_takes_a_task_over_http_and_finishes_the_job() {
    let s = server().await;
    assert_eq!(s.register("w1", WORKER_TOKEN).await.0, StatusCode::OK);
    assert_eq!(s.register("w2", WORKER_TOKEN).await.0, StatusCode::OK);
    // Nothing queued: 204 with an empty body after the (short) timeout.
    let resp = s
        .http
        .get(format!(
            "{}/_worker/workers/w1/tasks/next?timeout=0.1",
            s.base
        ))
        .header("X-Worker-Token", WORKER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(resp.bytes().await.unwrap().is_empty());
    // A waiting long-poll is woken by the new task.
    let http = s.http.clone();
    let url = format!("{}/_worker/workers/w1/tasks/next?timeout=20", s.base);
    let poll = tokio::spawn(async move {
        http.get(url)
            .header("X-Worker-Token", WORKER_TOKEN)
            .send()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let id = s
        .create(json!({"message": "Hello World", "multiply": 3}))
        .await;
    let resp = poll.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let task: Value = resp.json().await.unwrap();
    assert_eq!(task["job_id"], id);
    assert_eq!(task["type"], "echo_task");
    assert_eq!(
        task["params"],
        json!({"message": "Hello World", "multiply": 3})
    );
    // The wrong worker's result is ignored, the right one's accepted (status omitted = success).
    let result = json!({"job_id": id, "task_id": task["task_id"], "data": {"processed_message": "Hello World Hello World Hello World"}});
    let (st, v) = s
        .worker(
            Method::POST,
            "/_worker/tasks/result",
            "w2",
            WORKER_TOKEN,
            Some(signed(result.clone(), "w2", WORKER_TOKEN)),
        )
        .await;
    assert_eq!(
        (st, v["status"].as_str(), v["reason"].as_str()),
        (StatusCode::OK, Some("ignored"), Some("worker_mismatch"))
    );
    let (st, v) = s
        .worker(
            Method::POST,
            "/_worker/tasks/result",
            "w1",
            WORKER_TOKEN,
            Some(signed(result.clone(), "w1", WORKER_TOKEN)),
        )
        .await;
    assert_eq!(
        (st, v),
        (
            StatusCode::OK,
            json!({"status": "accepted", "transition": "success_transition"})
        )
    );
    let (_, v) = s
        .worker(
            Method::POST,
            "/_worker/tasks/result",
            "w1",
            WORKER_TOKEN,
            Some(signed(result, "w1", WORKER_TOKEN)),
        )
        .await;
    assert_eq!(v["status"], "ignored");
    let (_, job) = s
        .client(
            Method::GET,
            &format!("/api/v1/jobs/{id}?wait=5"),
            Some(CLIENT),
            None,
        )
        .await;
    assert_eq!(job["status"], "finished");
    assert_eq!(job["current_state"], "completed");
    assert_eq!(
        job["result"]["processed_message"],
        "Hello World Hello World Hello World"
    );
    assert_eq!(job["task_worker_id"], "w1");
    // Heartbeats: signed body or empty body.
    let (st, v) = s
        .worker(
            Method::PATCH,
            "/_worker/workers/w1",
            "w1",
            WORKER_TOKEN,
            Some(signed(
                json!({"worker_id": "w1", "status": "idle", "current_tasks": []}),
                "w1",
                WORKER_TOKEN,
            )),
        )
        .await;
    assert_eq!((st, v), (StatusCode::OK, json!({"status": "ok"})));
    let (st, v) = s
        .worker(
            Method::PATCH,
            "/_worker/workers/w1",
            "w1",
            WORKER_TOKEN,
            None,
        )
        .await;
    assert_eq!(
        (st, v),
        (StatusCode::OK, json!({"status": "ttl_refreshed"}))
    );
    let (_, workers) = s
        .client(Method::GET, "/api/v1/workers", Some(CLIENT), None)
        .await;
    let w1 = workers
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["worker_id"] == "w1")
        .unwrap();
    assert_eq!(w1["supported_skills"], json!(["echo_task"]));
    assert_eq!(w1["status"], "idle");
}

#[tokio::test]
async fn a_webhook_reports_the_end_of_the_job() {
    let s = server().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let hook = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::Json<Value>| {
            let tx = tx.clone();
            async move {
                tx.send(body.0).unwrap();
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, hook).await.unwrap() });

    assert_eq!(s.register("w1", WORKER_TOKEN).await.0, StatusCode::OK);
    let id = s
        .create(json!({
            "initial_data": {"message": "m"},
            "webhook_url": hook_url,
            "metadata": {"tenant": "acme"},
            "security": {"request_id": "r-1"},
            "policy": {"allowed_skills": ["echo_task"]},
            "max_transitions": 10
        }))
        .await;
    let (_, task) = s
        .worker(
            Method::GET,
            "/_worker/workers/w1/tasks/next?timeout=5",
            "w1",
            WORKER_TOKEN,
            None,
        )
        .await;
    // The job's options travel with its task, as avtomatika sends them.
    assert_eq!(task["metadata"], json!({"tenant": "acme"}));
    assert_eq!(task["security"], json!({"request_id": "r-1"}));
    assert_eq!(task["policy"], json!({"allowed_skills": ["echo_task"]}));
    let (_, job) = s
        .client(
            Method::GET,
            &format!("/api/v1/jobs/{id}"),
            Some(CLIENT),
            None,
        )
        .await;
    assert_eq!(job["metadata"], json!({"tenant": "acme"}), "{job}");
    assert_eq!(job["max_transitions"], 10, "{job}");
    let result = json!({"job_id": id, "task_id": task["task_id"], "status": "failure", "error": {"code": "INVALID_INPUT_ERROR", "message": "no"}});
    s.worker(
        Method::POST,
        "/_worker/tasks/result",
        "w1",
        WORKER_TOKEN,
        Some(signed(result, "w1", WORKER_TOKEN)),
    )
    .await;
    let body = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body["event"], "job_failed");
    assert_eq!(body["job_id"], id);
    assert_eq!(body["metadata"], json!({"tenant": "acme"}));
    assert_eq!(body["security"], json!({"request_id": "r-1"}));
    assert_eq!(body["current_state"], "failed");
    assert_eq!(
        body["error"],
        json!({"code": "INVALID_INPUT_ERROR", "message": "no"})
    );
    let (st, err) = s
        .client(
            Method::POST,
            "/api/v1/jobs/test",
            Some(CLIENT),
            Some(r#"{"initial_data": {}, "webhook_url": "ftp://x"}"#),
        )
        .await;
    assert_eq!(
        (st, err["error"].as_str()),
        (
            StatusCode::BAD_REQUEST,
            Some("'webhook_url' must be an http(s) URL")
        )
    );
}
