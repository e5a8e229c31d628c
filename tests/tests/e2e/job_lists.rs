//! The job list at scale's rules, over real processes: paging by cursor is
//! stable while jobs arrive, deep offsets are refused with the way out, and
//! ended jobs past `finished_job_retention` are deleted (then 404).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use crate::support::*;
use serde_json::json;

#[tokio::test]
async fn paging_by_cursor_sees_every_job_once_while_new_ones_arrive() {
    let mut stack = Stack::new();
    stack.start_orchestrator();
    stack.wait_ready().await;
    // No worker: the jobs wait, none changes while we page.
    let mut before = Vec::new();
    for i in 0..40 {
        before.push(
            stack
                .create("/jobs/test", echo_body(&format!("{i}"), 1))
                .await,
        );
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &after {
            Some(cursor) => format!("/api/v1/jobs?limit=7&after={cursor}"),
            None => "/api/v1/jobs?limit=7".to_string(),
        };
        let (status, page) = stack.get(&query).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        seen.extend(
            page["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_string()),
        );
        // New jobs arrive between pages: they are newer, above the walk.
        for _ in 0..3 {
            stack.create("/jobs/test", echo_body("new", 1)).await;
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 6, "40 jobs in pages of 7");
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a job seen twice: {seen:?}");
    before.reverse();
    assert_eq!(
        seen, before,
        "every job once, newest first, none of the new"
    );

    // Deep offsets are refused with the way out; a bad cursor is named.
    let (status, v) = stack.get("/api/v1/jobs?offset=10001").await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("after"), "{v}");
    let (status, _) = stack.get("/api/v1/jobs?offset=10000").await;
    assert_eq!(status, 200);
    let (status, v) = stack.get("/api/v1/jobs?after=yesterday").await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("'after'"), "{v}");
    let (orchestrator, _) = stack.logs();
    assert!(!orchestrator.contains("panicked"));
}

#[tokio::test]
async fn ended_jobs_past_their_retention_are_deleted_with_their_history() {
    let mut stack = Stack::new();
    stack.start_orchestrator_with(|cmd| {
        cmd.env("FINISHED_JOB_RETENTION", "3s");
    });
    stack.wait_ready().await;
    stack.start_worker();
    stack.wait_worker().await;
    let long = stack
        .create("/jobs/test", json!({"message": "long", "work_ms": 60000}))
        .await;
    let mut ended = Vec::new();
    for i in 0..5 {
        let id = stack
            .create("/jobs/test", echo_body(&format!("{i}"), 1))
            .await;
        assert_eq!(stack.finished(&id).await["status"], "finished");
        ended.push(id);
    }
    wait_until(
        "the ended jobs to be deleted",
        Duration::from_secs(30),
        || async {
            let mut gone = true;
            for id in &ended {
                gone &= stack.get(&format!("/api/v1/jobs/{id}")).await.0 == 404;
            }
            gone
        },
    )
    .await;
    for id in &ended {
        let (status, v) = stack.get(&format!("/api/v1/jobs/{id}/history")).await;
        assert_eq!(status, 404, "{v}");
    }
    // The running job stays; a job that just ended is not due yet.
    let (status, v) = stack.get(&format!("/api/v1/jobs/{long}")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["finished_at"],
        serde_json::Value::Null,
        "still running: {v}"
    );
    let fresh = stack.create("/jobs/test", echo_body("fresh", 1)).await;
    stack.finished(&fresh).await;
    assert_eq!(stack.get(&format!("/api/v1/jobs/{fresh}")).await.0, 200);
    let (_, list) = stack.get("/api/v1/jobs").await;
    let listed: Vec<&str> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![fresh.as_str(), long.as_str()], "{list}");
    let (orchestrator, worker) = stack.logs();
    assert!(
        orchestrator.contains("past finished_job_retention"),
        "{orchestrator}"
    );
    assert!(!orchestrator.contains("panicked") && !worker.contains("panicked"));
}
