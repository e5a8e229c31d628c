//! Steering running tasks, with real processes: a client's cancel stops the
//! WASM task on the worker, and a task's progress reaches the job.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

async fn chaos_stack(slots: &str) -> Stack {
    let mut stack = Stack::new();
    stack.add_plugin(plugin_fixtures::CHAOS_TASK);
    stack.add_blueprint("one_spin_forever", &one_task_flow("spin_forever"));
    stack.add_blueprint("one_progress_sleep", &one_task_flow("progress_sleep"));
    stack.start_orchestrator();
    stack.wait_ready().await;
    // 15 s heartbeats: a cancel must not wait for them.
    stack.worker = Some(stack.spawn_worker(WORKER_ID, "worker.log", |cmd| {
        cmd.args([
            "--heartbeat-interval",
            "15",
            "--max-concurrent-tasks",
            slots,
        ]);
    }));
    stack.wait_worker().await;
    stack
}

#[tokio::test]
async fn cancelling_a_job_stops_its_running_task_and_frees_the_slot() {
    let stack = chaos_stack("1").await;
    let id = stack.create("/jobs/one/spin_forever", json!({})).await;
    wait_until("the task to run", Duration::from_secs(20), || async {
        stack.logs().1.contains("received task")
    })
    .await;
    let resp = stack
        .http
        .post(format!("{}/api/v1/jobs/{id}/cancel", stack.base))
        .header("X-Client-Token", CLIENT_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let cancelled = Instant::now();
    wait_until(
        "the worker to stop the task",
        Duration::from_secs(10),
        || async {
            stack
                .logs()
                .1
                .contains("its job was cancelled; its slot is free")
        },
    )
    .await;
    let took = cancelled.elapsed();
    eprintln!("task stopped {took:?} after the cancel");
    assert!(took < Duration::from_secs(3), "stopped after {took:?}");
    // The one slot serves the next task at once.
    let next = stack.create("/jobs/test", echo_body("next", 1)).await;
    let job = stack.finished(&next).await;
    assert_eq!(job["status"], "finished", "{job}");
    // The cancelled job stays cancelled; nothing came back for it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, job) = stack.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    let (orchestrator, worker) = stack.logs();
    assert!(!orchestrator.contains("panicked") && !worker.contains("panicked"));
}

#[tokio::test]
async fn a_tasks_progress_shows_on_its_job_while_it_runs() {
    let stack = chaos_stack("2").await;
    let id = stack
        .create("/jobs/one/progress_sleep", json!({"ms": 4000}))
        .await;
    wait_until("the progress to show", Duration::from_secs(10), || async {
        let (_, job) = stack.get(&format!("/api/v1/jobs/{id}")).await;
        job["status"] == "waiting_for_worker"
            && job["progress"]["progress"] == 0.5
            && job["progress"]["message"] == "halfway"
    })
    .await;
    let job = stack.finished(&id).await;
    assert_eq!(job["status"], "finished", "{job}");
}

#[tokio::test]
async fn a_plugins_secret_reaches_it_but_never_the_workers_log() {
    const SECRET: &str = "s3cr3t-9f8e7d";
    let mut stack = Stack::new();
    stack.add_plugin(plugin_fixtures::CHAOS_TASK);
    let plugins = stack.dir.path().join("plugins");
    std::fs::write(
        plugins.join("chaos_task.toml"),
        "[config]\nsecret_keys = [\"api_key\"]\n",
    )
    .unwrap();
    let policy = stack.dir.path().join("policy.toml");
    std::fs::write(&policy, "# values come from the environment\n").unwrap();
    stack.add_blueprint(
        "read_secret",
        r#"
name = "read_secret"
api_endpoint = "/jobs/read-secret"
api_version = "v1"
[states.start]
start = true
dispatch.task = "read_config"
dispatch.params.key = "'api_key'"
dispatch.params.print = true
dispatch.on = { success = "done" }
[states.done]
end = "finished"
"#,
    );
    stack.start_orchestrator();
    stack.wait_ready().await;
    stack.worker = Some(stack.spawn_worker(WORKER_ID, "worker.log", |cmd| {
        cmd.arg("--policy")
            .arg(&policy)
            .env("PLUGIN_CHAOS_TASK_API_KEY", SECRET);
    }));
    stack.wait_worker().await;
    let id = stack.create("/jobs/read-secret", json!({})).await;
    let job = stack.finished(&id).await;
    assert_eq!(job["status"], "finished", "{job}");
    assert_eq!(job["result"]["found"], true, "{job}");
    assert_eq!(job["result"]["length"], SECRET.len());
    let (_, log) = stack.logs();
    assert!(
        log.contains("config api_key = Some(\"[redacted]\")"),
        "{log}"
    );
    assert!(!log.contains(SECRET), "the secret is in the worker's log");
}
