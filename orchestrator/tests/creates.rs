//! Creates with a later start or an idempotency key, on both backends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use orchestrator::engine::{Engine, NewJob};
use orchestrator::job::JobStatus;
use serde_json::json;

const FLOW: &str = r#"
[states.start]
start = true
dispatch.task = "echo"
dispatch.on = { success = "done" }
[states.done]
end = "finished"
"#;

fn new_job(owner: &str) -> NewJob {
    NewJob {
        blueprint: "flow".into(),
        owner: owner.into(),
        initial_data: json!({"n": 1}).as_object().cloned().unwrap(),
        ..NewJob::default()
    }
}

on_both!(a_job_asked_to_start_later_waits_scheduled_then_starts);
async fn a_job_asked_to_start_later_waits_scheduled_then_starts(h: Holder) {
    let engine = h.engine(FLOW).await;
    register(&engine, "w1", &["echo"]).await;
    let later = h.pick(Duration::from_secs(600), Duration::from_secs(2));
    let id = engine
        .create_job(NewJob {
            start_at: Some(chrono::Utc::now() + chrono::Duration::from_std(later).unwrap()),
            ..new_job("default")
        })
        .await
        .unwrap();
    let j = job(&engine, id).await;
    assert_eq!(j.status, JobStatus::Scheduled);
    assert!(
        engine
            .waiting_reason(&j)
            .await
            .unwrap()
            .starts_with("scheduled to start at "),
    );
    assert!(
        poll(&engine, "w1").await.is_none(),
        "dispatched before its time"
    );
    tokio::time::sleep(later + Duration::from_millis(500)).await;
    // Heard from again (a long wait in paused time outlives its liveness).
    register(&engine, "w1", &["echo"]).await;
    let task = poll_within(&engine, "w1", Duration::from_secs(5)).await;
    assert_eq!(task.unwrap().job_id, id.to_string());
    assert_eq!(job(&engine, id).await.status, JobStatus::WaitingForWorker);
}

async fn create_many(engine: &Engine, key: &str, n: usize) -> Vec<uuid::Uuid> {
    let mut handles = Vec::new();
    for _ in 0..n {
        let engine = engine.clone();
        let key = key.to_string();
        handles.push(tokio::spawn(async move {
            engine.create_job_once(new_job("default"), &key).await
        }));
    }
    let mut ids = Vec::new();
    for h in handles {
        ids.push(h.await.unwrap().unwrap().0);
    }
    ids
}

on_both!(creates_racing_with_one_key_make_one_job_per_client);
async fn creates_racing_with_one_key_make_one_job_per_client(h: Holder) {
    let engine = h.engine(FLOW).await;
    let other = match h {
        Holder::Postgres => Holder::second(&engine, FLOW).await,
        Holder::Memory => (*engine).clone(),
    };
    let (a, b) = tokio::join!(
        create_many(&engine, "order-42", 100),
        create_many(&other, "order-42", 100)
    );
    let ids: std::collections::BTreeSet<_> = a.into_iter().chain(b).collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let first = *ids.first().unwrap();
    // A repeat says it is one.
    let (again, replayed) = engine
        .create_job_once(new_job("default"), "order-42")
        .await
        .unwrap();
    assert_eq!((again, replayed), (first, true));
    // Another client's key of the same name is its own.
    let (theirs, replayed) = engine
        .create_job_once(new_job("vip"), "order-42")
        .await
        .unwrap();
    assert!(!replayed && theirs != first);
    // A create that fails gives its key back.
    let bad = NewJob {
        blueprint: "nope".into(),
        ..new_job("default")
    };
    assert!(engine.create_job_once(bad, "k2").await.is_err());
    let (fresh, replayed) = engine
        .create_job_once(new_job("default"), "k2")
        .await
        .unwrap();
    assert!(!replayed);
    assert_eq!(job(&engine, fresh).await.blueprint, "flow");
}
