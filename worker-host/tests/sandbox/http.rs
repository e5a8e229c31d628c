//! Outbound HTTP from a plugin (the real `http_fetch_task` through
//! `wasi:http`) against real HTTP servers on 127.0.0.1.

use std::time::Duration;

use plugin_fixtures::HTTP_FETCH_TASK;
use serde_json::{Value, json};
use worker_host::grants::Policy;
use worker_host::outcome::TaskOutcome;
use worker_host::plugin_store::{Plugin, PluginError, PluginLoader};
use worker_host::sandbox::{RunOptions, Sandbox, Task};

const BODY: &str = "hello from the allowed origin";

/// A real HTTP server on 127.0.0.1 with a few routes; its port.
async fn server() -> u16 {
    let app = axum::Router::new()
        .route(
            "/ok",
            axum::routing::get(|| async { ([("content-type", "text/plain")], BODY) }),
        )
        .route(
            "/redirect",
            axum::routing::get(|| async {
                axum::response::Redirect::temporary("http://169.254.169.254/latest")
            }),
        )
        .route("/big", axum::routing::get(|| async { "b".repeat(200_000) }))
        .route(
            "/hang",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "late"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

async fn load(
    manifest: &str,
    policy: &str,
) -> Result<(Sandbox, Plugin, tempfile::TempDir), PluginError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(HTTP_FETCH_TASK, dir.path().join("http_fetch_task.wasm")).unwrap();
    std::fs::write(dir.path().join("http_fetch_task.toml"), manifest).unwrap();
    let engine = super::engine(Duration::from_secs(10), 64);
    let policy: Policy = toml::from_str(policy).unwrap();
    let loader = PluginLoader::with_policy(engine.clone(), policy).unwrap();
    let plugin = loader
        .load_file(&dir.path().join("http_fetch_task.wasm"))
        .await?;
    Ok((engine, plugin, dir))
}

async fn fetch(engine: &Sandbox, plugin: &Plugin, url: &str) -> Result<Value, (String, String)> {
    let input = Task {
        task_id: "t".into(),
        job_id: "j".into(),
        task_type: "http_fetch_task".into(),
        params: json!({ "url": url }).to_string(),
    };
    let outcome = plugin.run(engine, &input, RunOptions::default()).await;
    match outcome {
        TaskOutcome::Completed { data, .. } => Ok(Value::Object(data)),
        TaskOutcome::Failed { code, message, .. } => Err((code, message)),
        TaskOutcome::Cancelled => panic!("cancelled"),
    }
}

fn sha256(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn an_allowed_origin_is_fetched_and_everything_else_is_denied() {
    let port = server().await;
    let other = server().await;
    let manifest = format!(
        "[http]\nallowed_origins = [\"http://127.0.0.1:{port}\", \"http://localhost:{other}\"]\nmax_response_bytes = 100000\ntimeout_seconds = 2\n"
    );
    let policy = "allowed_origins = [\"http://127.0.0.1:*\", \"http://localhost:*\"]\n";
    let (engine, plugin, _dir) = load(&manifest, policy).await.unwrap();

    let v = fetch(&engine, &plugin, &format!("http://127.0.0.1:{port}/ok"))
        .await
        .unwrap();
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["bytes"], BODY.len());
    assert_eq!(v["sha256"], sha256(BODY));
    assert_eq!(v["content_type"], "text/plain");

    // Not listed: another port of the same address.
    let (code, message) = fetch(&engine, &plugin, &format!("http://127.0.0.1:{other}/ok"))
        .await
        .unwrap_err();
    assert_eq!(code, "PERMANENT_ERROR");
    assert!(message.contains("HttpRequestDenied"), "{message}");
    // A name that resolves to loopback, while only the address is named for
    // loopback: denied after resolution.
    let (_, message) = fetch(&engine, &plugin, &format!("http://localhost:{other}/ok"))
        .await
        .unwrap_err();
    assert!(message.contains("DestinationIpProhibited"), "{message}");
    // A redirect is handed to the guest, not followed.
    let v = fetch(
        &engine,
        &plugin,
        &format!("http://127.0.0.1:{port}/redirect"),
    )
    .await
    .unwrap();
    assert_eq!(v["status"], 307, "{v}");
    // A body over the cap stops the read with a clear error.
    let (_, message) = fetch(&engine, &plugin, &format!("http://127.0.0.1:{port}/big"))
        .await
        .unwrap_err();
    assert!(message.contains("body size exceeds limit"), "{message}");
    // A server that never answers: the request times out inside the task.
    let started = std::time::Instant::now();
    let (code, message) = fetch(&engine, &plugin, &format!("http://127.0.0.1:{port}/hang"))
        .await
        .unwrap_err();
    assert_eq!(code, "TRANSIENT_ERROR", "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn without_a_grant_every_request_is_denied() {
    let port = server().await;
    let (engine, plugin, _dir) = load("", "").await.unwrap();
    let (_, message) = fetch(&engine, &plugin, &format!("http://127.0.0.1:{port}/ok"))
        .await
        .unwrap_err();
    assert!(message.contains("HttpRequestDenied"), "{message}");
}

#[tokio::test]
async fn an_origin_outside_the_policy_is_refused_at_load() {
    let err = load(
        "[http]\nallowed_origins = [\"https://evil.example\"]\n",
        "allowed_origins = [\"https://*.example.com\"]\n",
    )
    .await
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("not within the worker's policy"),
        "{err}"
    );
}
