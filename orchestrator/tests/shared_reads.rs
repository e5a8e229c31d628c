//! Two instances on one PostgreSQL database: each answers job reads from
//! its own memory, and forgets a job as soon as the other one changes it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
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

#[tokio::test]
async fn a_job_changed_by_another_instance_is_read_fresh_here() {
    let a = Holder::Postgres.engine(FLOW).await;
    let b = Holder::second(&a, FLOW).await;
    let id = create(&a, json!({})).await;
    // Read through A: A now holds the job.
    assert_eq!(job(&a, id).await.status, JobStatus::WaitingForWorker);
    assert_eq!(job(&a, id).await.status, JobStatus::WaitingForWorker);
    b.cancel_job(id, "default").await.unwrap();
    // Well before an entry goes stale by age (2 s): B's notification.
    assert!(
        eventually(Duration::from_millis(500), async || job(&a, id)
            .await
            .status
            == JobStatus::Cancelled)
        .await,
        "A still reads the job as it was before B cancelled it"
    );
}

#[tokio::test]
async fn a_wait_on_one_instance_ends_when_the_other_finishes_the_job() {
    let a = Holder::Postgres.engine(FLOW).await;
    let b = Holder::second(&a, FLOW).await;
    register(&b, "w", &["echo"]).await;
    let id = create(&a, json!({})).await;
    assert_eq!(job(&a, id).await.status, JobStatus::WaitingForWorker);
    let waiting = {
        let a = (*a).clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            a.wait_for_job(id, Duration::from_secs(20)).await;
            started.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let task = poll(&b, "w").await.unwrap();
    b.submit_result("w", success(&task, "success", json!({})))
        .await
        .unwrap();
    let waited = waiting.await.unwrap();
    assert!(
        waited < Duration::from_secs(5),
        "the wait ended only after {waited:?}"
    );
    assert_eq!(job(&a, id).await.status, JobStatus::Finished);
}

#[tokio::test]
async fn the_active_job_bound_counts_creates_between_two_counts_and_on_every_instance() {
    let settings = orchestrator::engine::EngineSettings {
        max_active_jobs_per_client: 20,
        ..Default::default()
    };
    let a = Holder::Postgres.engine_with(FLOW, settings).await;
    // No worker: every job stays active. The count is reused between
    // creates here (each adds one), so the 21st is refused all the same.
    for _ in 0..20 {
        create(&a, json!({})).await;
    }
    let refused = a
        .create_job(orchestrator::engine::NewJob {
            blueprint: "flow".into(),
            owner: "default".into(),
            ..Default::default()
        })
        .await;
    assert!(
        matches!(
            refused,
            Err(orchestrator::engine::EngineError::TooManyActiveJobs(_))
        ),
        "{refused:?}"
    );
    // Another instance counts them too.
    let b = Holder::second(&a, FLOW).await;
    let elsewhere = b
        .create_job(orchestrator::engine::NewJob {
            blueprint: "flow".into(),
            owner: "default".into(),
            ..Default::default()
        })
        .await;
    assert!(elsewhere.is_err(), "{elsewhere:?}");
}
