//! Durability: jobs accepted before a stop are all there after a start on the
//! same SQLite file, and they finish.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::*;
use orchestrator::engine::{EngineSettings, Store};
use orchestrator::job::JobStatus;
use orchestrator::storage::sqlite::SqliteStorage;
use serde_json::json;

const FLOW: &str = r#"
[states.start]
start = true
dispatch.task = "echo"
dispatch.params.n = "initial.n"
dispatch.on = { success = "done" }
[states.done]
end = "finished"
"#;

#[test]
fn accepted_jobs_survive_a_restart_and_finish() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orchestrator.db");

    // First life: accept 20 jobs; a worker takes one and never answers; one finishes.
    let (ids, finished_id) = {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let storage = Arc::new(SqliteStorage::open(&db).unwrap());
            let engine = engine_on(FLOW, EngineSettings::default(), Store::Local(storage)).await;
            let mut ids = Vec::new();
            for n in 0..20 {
                ids.push(create(&engine, json!({"n": n})).await);
            }
            register(&engine, "w", &["echo"]).await;
            let done = poll(&engine, "w").await.unwrap();
            engine
                .submit_result(
                    "w",
                    success(&done, "success", json!({"n": done.params["n"]})),
                )
                .await
                .unwrap();
            let _taken_and_lost = poll(&engine, "w").await.unwrap();
            engine.sync_storage().await;
            (ids, done.job_id.clone())
        })
        // Dropping the runtime stops everything, as a process exit would.
    };

    // Second life on the same file.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let storage = Arc::new(SqliteStorage::open(&db).unwrap());
        let engine = engine_on(FLOW, EngineSettings::default(), Store::Local(storage)).await;
        for id in &ids {
            let job = job(&engine, *id).await;
            let expected = if id.to_string() == finished_id {
                JobStatus::Finished
            } else {
                JobStatus::WaitingForWorker
            };
            assert_eq!(job.status, expected, "job {id}");
        }
        register(&engine, "w2", &["echo"]).await;
        let mut served = 0;
        while let Some(task) = poll(&engine, "w2").await {
            engine
                .submit_result(
                    "w2",
                    success(&task, "success", json!({"n": task.params["n"]})),
                )
                .await
                .unwrap();
            served += 1;
        }
        assert_eq!(
            served, 19,
            "every unfinished job, the lost one included, is served again"
        );
        for (n, id) in ids.iter().enumerate() {
            let job = job(&engine, *id).await;
            assert_eq!(job.status, JobStatus::Finished, "job {id}");
            assert_eq!(job.result.unwrap()["n"], n);
        }
        engine.sync_storage().await;
        let events = engine.job_events(ids[1]).await.unwrap();
        assert!(events.iter().any(|e| e.event == "recovered"), "{events:?}");
    });
}

const SLEEP_FLOW: &str = r#"
[states.start]
start = true
sleep = { seconds = "initial.secs", next = "done" }
[states.done]
end = "finished"
"#;

/// A sleeping job is stored with its wake-up time: after a restart it
/// sleeps on to that time (not a fresh full wait), then goes on.
#[test]
fn a_sleeping_job_wakes_after_a_restart_at_its_time() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orchestrator.db");
    let (id, wake_at) = {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let storage = Arc::new(SqliteStorage::open(&db).unwrap());
            let engine =
                engine_on(SLEEP_FLOW, EngineSettings::default(), Store::Local(storage)).await;
            let id = create(&engine, json!({"secs": 2})).await;
            let j = job(&engine, id).await;
            assert_eq!(j.status, JobStatus::Sleeping);
            engine.sync_storage().await;
            (id, j.wake_at.unwrap())
        })
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let storage = Arc::new(SqliteStorage::open(&db).unwrap());
        let engine = engine_on(SLEEP_FLOW, EngineSettings::default(), Store::Local(storage)).await;
        let j = job(&engine, id).await;
        assert_eq!(j.status, JobStatus::Sleeping);
        assert_eq!(j.wake_at, Some(wake_at));
        let j = job_reaches(
            &engine,
            id,
            JobStatus::Finished,
            std::time::Duration::from_secs(5),
        )
        .await;
        assert_eq!(j.status, JobStatus::Finished);
        // Not before its time.
        assert!(j.finished_at.unwrap() >= wake_at, "{j:?}");
    });
}
