//! Creates over HTTP with an idempotency key (through two instances on
//! PostgreSQL) and with a later start.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use crate::support::*;
use serde_json::{Value, json};

async fn create_with_key(stack: &Stack, key: &str, body: Value) -> (u16, Value, bool) {
    let resp = stack
        .http
        .post(format!("{}/api/v1/jobs/test", stack.base))
        .header("X-Client-Token", CLIENT_TOKEN)
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let replayed = resp.headers().get("idempotent-replayed").is_some();
    (status, resp.json().await.unwrap_or(Value::Null), replayed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_creates_with_one_key_through_two_instances_make_one_job() {
    let mut a = Stack::on_postgres().await;
    let mut b = Stack::new();
    b.storage = a.storage.clone();
    a.start_orchestrator();
    a.wait_ready().await;
    b.start_orchestrator();
    b.wait_ready().await;
    let mut handles = Vec::new();
    for i in 0..200 {
        let (base, http) = if i % 2 == 0 {
            (a.base.clone(), a.http.clone())
        } else {
            (b.base.clone(), b.http.clone())
        };
        handles.push(tokio::spawn(async move {
            let resp = http
                .post(format!("{base}/api/v1/jobs/test"))
                .header("X-Client-Token", CLIENT_TOKEN)
                .header("Idempotency-Key", "invoice-7")
                .json(&echo_body("once", 1))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let replayed = resp.headers().get("idempotent-replayed").is_some();
            let body: Value = resp.json().await.unwrap();
            (
                status,
                body["job_id"].as_str().unwrap_or_default().to_string(),
                replayed,
            )
        }));
    }
    let mut ids = BTreeSet::new();
    let mut replays = 0;
    for h in handles {
        let (status, id, replayed) = h.await.unwrap();
        assert_eq!(status, 202, "{id}");
        ids.insert(id);
        replays += usize::from(replayed);
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(replays, 199);
    let (_, page) = a.get("/api/v1/jobs?limit=1000").await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1, "{page}");
    a.assert_no_panic();
    b.assert_no_panic();
}

#[tokio::test]
async fn a_key_in_the_body_or_a_bad_one_and_a_later_start() {
    let mut stack = Stack::new();
    stack.start().await;
    // The header and the body's field name the same key.
    let body = json!({"initial_data": {"message": "m"}, "idempotency_key": "k-1"});
    let (status, first, _) = create_with_key(&stack, "k-1", body.clone()).await;
    assert_eq!(status, 202, "{first}");
    let (_, again, replayed) = create_with_key(&stack, "k-1", body).await;
    assert!(replayed);
    assert_eq!(again["job_id"], first["job_id"]);
    let (status, err, _) = create_with_key(
        &stack,
        "k-1",
        json!({"initial_data": {}, "idempotency_key": "k-2"}),
    )
    .await;
    assert_eq!(status, 400, "{err}");
    let (status, err, _) = create_with_key(&stack, &"x".repeat(300), json!({})).await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["error"].as_str().unwrap().contains("Idempotency-Key"),
        "{err}"
    );

    // A later start: scheduled, then run.
    let (status, created) = stack
        .try_create(
            "/jobs/test",
            json!({"initial_data": {"message": "later", "multiply": 1}, "delay_seconds": 2}),
        )
        .await;
    assert_eq!(status, 202, "{created}");
    let id = created["job_id"].as_str().unwrap();
    let (_, job) = stack.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(job["status"], "scheduled", "{job}");
    assert!(
        job["waiting_reason"]
            .as_str()
            .unwrap()
            .starts_with("scheduled to start at")
    );
    let job = stack.finished(id).await;
    assert_eq!(job["status"], "finished", "{job}");
    let (status, err) = stack
        .try_create(
            "/jobs/test",
            json!({"initial_data": {}, "run_at": "2026-13-01", "delay_seconds": 1}),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    stack.assert_no_panic();
}
