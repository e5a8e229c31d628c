//! The user's scenario (`shared/SCENARIO.md`), as a user would type it:
//! real `orchestrator` and `worker-host` processes, real plugins, real HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::support::*;
use serde_json::json;

#[tokio::test]
async fn main_flow_and_the_plans_additional_tests() {
    main_flow(Stack::new()).await;
}

#[tokio::test]
async fn main_flow_and_the_plans_additional_tests_on_postgres() {
    main_flow(Stack::on_postgres().await).await;
}

async fn main_flow(mut stack: Stack) {
    stack.start().await;

    // The scenario's curl: old header, flat body.
    let id = stack
        .create("/jobs/test", echo_body("Hello World", 3))
        .await;
    let job = stack.finished(&id).await;
    assert_eq!(job["status"], "finished", "{job}");
    assert_eq!(job["current_state"], "completed");
    assert_eq!(
        job["result"]["processed_message"],
        "Hello World Hello World Hello World"
    );
    assert_eq!(job["result"]["original_message"], "Hello World");
    assert_eq!(job["result"]["multiplied_by"], 3);
    assert_eq!(job["task_worker_id"], WORKER_ID);

    // The current avtomatika way: X-Client-Token and {"initial_data": ...}.
    let resp = stack
        .http
        .post(format!("{}/api/v1/jobs/test", stack.base))
        .header("X-Client-Token", CLIENT_TOKEN)
        .json(&json!({"initial_data": {"message": "Hi", "multiply": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let id2 = resp.json::<serde_json::Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let job = stack.finished(&id2).await;
    assert_eq!(job["result"]["processed_message"], "Hi Hi");

    // Defaults from the blueprint when the data is missing.
    let id3 = stack.create("/jobs/test", json!({})).await;
    let job = stack.finished(&id3).await;
    assert_eq!(
        job["result"]["processed_message"],
        "Hello from Orchestrator! Hello from Orchestrator!"
    );

    // Test 1: the registered worker is listed with its task.
    let (status, workers) = stack.get("/api/v1/workers").await;
    assert_eq!(status, 200);
    let me = workers
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["worker_id"] == WORKER_ID)
        .expect("worker listed");
    assert_eq!(me["worker_type"], "test-worker");
    assert!(
        me["supported_skills"]
            .as_array()
            .unwrap()
            .contains(&json!("echo_task"))
    );

    // Test 2: the failing task ends in the failure path with its error visible.
    let failing = stack.create("/jobs/failing", json!({})).await;
    let job = stack.finished(&failing).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["current_state"], "failed");
    assert_eq!(job["error"]["code"], "TRANSIENT_ERROR");
    assert_eq!(job["error"]["message"], "Intentional failure for testing");

    // Test 3: five jobs in a row, multiply 1..5.
    let mut ids = Vec::new();
    for n in 1..=5 {
        ids.push((n, stack.create("/jobs/test", echo_body("Test", n)).await));
    }
    for (n, id) in ids {
        let job = stack.finished(&id).await;
        assert_eq!(job["status"], "finished");
        let expected = vec!["Test"; n as usize].join(" ");
        assert_eq!(job["result"]["processed_message"], expected.as_str());
    }

    // The success checklist, in the logs.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (orch, worker) = stack.logs();
    for line in [
        "orchestrator listening on http://127.0.0.1:",
        "POST http://127.0.0.1:",
        "/api/v1/jobs/test",
        "X-Client-Token",
        "worker local-test-worker registered",
        &format!("job {id} started (test_flow)"),
        "dispatched to worker local-test-worker",
        &format!("job {id} completed in state completed"),
        "Hello World Hello World Hello World",
    ] {
        assert!(
            orch.contains(line),
            "orchestrator log lacks {line:?}:\n{orch}"
        );
    }
    for line in [
        "worker id: local-test-worker",
        "orchestrator: http://localhost:",
        "supported tasks: echo_task, failing_task",
        "registered with the orchestrator",
        "heartbeat sent",
        "polling for tasks started",
        &format!("for job {id} with params"),
        "received task",
        "done in",
        "Hello World Hello World Hello World",
    ] {
        assert!(
            worker.contains(line),
            "worker log lacks {line:?}:\n{worker}"
        );
    }

    // Ctrl-C / SIGTERM: both stop cleanly and the worker says goodbye.
    let w = stack.worker.as_mut().unwrap().stop().unwrap();
    assert!(w.success(), "worker exit: {w:?}");
    assert!(stack.logs().1.contains("goodbye"), "{}", stack.logs().1);
    let o = stack.orchestrator.as_mut().unwrap().stop().unwrap();
    assert!(o.success(), "orchestrator exit: {o:?}");
}

#[tokio::test]
async fn troubleshooting_cases_are_easy() {
    let mut stack = Stack::new();
    // A broken file among the plugins is skipped with a clear log line.
    std::fs::write(stack.dir.path().join("plugins/broken.wasm"), b"not wasm").unwrap();
    // The worker starts first: it says it cannot connect and keeps retrying.
    stack.start_worker();
    wait_until(
        "the worker to complain",
        Duration::from_secs(30),
        || async { stack.logs().1.contains("cannot reach the orchestrator") },
    )
    .await;
    assert!(stack.worker.as_mut().unwrap().is_running());
    let worker_log = stack.logs().1;
    assert!(
        worker_log.contains("skipping plugin: ")
            && worker_log.contains("broken.wasm is not a WebAssembly file"),
        "{worker_log}"
    );
    assert!(
        worker_log.contains("supported tasks: echo_task, failing_task"),
        "{worker_log}"
    );
    stack.start_orchestrator();
    stack.wait_ready().await;
    stack.wait_worker().await;

    // A wrong token: 401 with a JSON error.
    let resp = stack
        .http
        .post(format!("{}/api/v1/jobs/test", stack.base))
        .header("X-Avtomatika-Token", "wrong-token")
        .json(&echo_body("x", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap(),
        json!({"error": "Unauthorized: Invalid token"})
    );

    // A task type no worker offers: the job waits and says why.
    let id = stack.create("/jobs/ghost", json!({})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, job) = stack.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(job["status"], "waiting_for_worker");
    assert_eq!(
        job["waiting_reason"],
        "no registered worker offers task type no_such_task"
    );
    assert!(
        stack
            .logs()
            .0
            .contains("no registered worker offers task type no_such_task")
    );
}

#[tokio::test]
async fn accepted_jobs_survive_an_orchestrator_restart() {
    survives_a_restart(Stack::new()).await;
}

#[tokio::test]
async fn accepted_jobs_survive_an_orchestrator_restart_on_postgres() {
    survives_a_restart(Stack::on_postgres().await).await;
}

async fn survives_a_restart(mut stack: Stack) {
    stack.start_orchestrator();
    stack.wait_ready().await;
    // No worker yet: the jobs are accepted and wait.
    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(stack.create("/jobs/test", echo_body("again", n)).await);
    }
    let status = stack.orchestrator.as_mut().unwrap().stop().unwrap();
    assert!(status.success());
    stack.start_orchestrator();
    stack.wait_ready().await;
    stack.start_worker();
    for (n, id) in ids.iter().enumerate() {
        let job = stack.finished(id).await;
        assert_eq!(job["status"], "finished", "{job}");
        assert_eq!(job["result"]["multiplied_by"], n + 1);
    }
}

#[tokio::test]
async fn a_plugin_dropped_into_the_directory_is_served_without_a_restart() {
    let mut stack = Stack::new();
    stack.start().await;
    let id = stack.create("/jobs/hot", json!({"doc": 42})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, job) = stack.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(
        job["waiting_reason"],
        "no registered worker offers task type custom_status"
    );
    // Deploy: copy the new component in (write to a temp name, then rename, as a deploy tool would).
    let plugins = stack.dir.path().join("plugins");
    std::fs::copy(
        plugin_fixtures::CHAOS_TASK,
        plugins.join("chaos_task.wasm.part"),
    )
    .unwrap();
    std::fs::rename(
        plugins.join("chaos_task.wasm.part"),
        plugins.join("chaos_task.wasm"),
    )
    .unwrap();
    let job = stack.finished(&id).await;
    assert_eq!(job["status"], "finished", "{job}");
    assert_eq!(job["current_state"], "review");
    assert_eq!(job["result"]["params"]["doc"], 42);
    assert!(stack.worker.as_mut().unwrap().is_running());
    let worker_log = stack.logs().1;
    assert!(
        worker_log.contains("plugins reloaded; supported tasks:"),
        "{worker_log}"
    );
    // The old skills are still served.
    let id = stack.create("/jobs/test", echo_body("still", 2)).await;
    assert_eq!(
        stack.finished(&id).await["result"]["processed_message"],
        "still still"
    );
}

#[tokio::test]
async fn create_and_wait_in_one_request_and_a_stream_of_job_updates() {
    let mut stack = Stack::new();
    stack.start().await;
    let post = |path: &str, body: serde_json::Value| {
        stack
            .http
            .post(format!("{}{path}", stack.base))
            .header("X-Client-Token", CLIENT_TOKEN)
            .json(&body)
            .send()
    };
    // Done in time: 200 with the finished job.
    let resp = post("/api/v1/jobs/test?wait=20", echo_body("Hi", 2))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let job: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(job["status"], "finished", "{job}");
    assert_eq!(job["result"]["processed_message"], "Hi Hi");
    // Not done in time (no worker offers the task): the usual 202.
    let resp = post("/api/v1/jobs/ghost?wait=0.3", json!({}))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let accepted: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(accepted["status"], "accepted");
    let resp = post("/api/v1/jobs/test?wait=forever", echo_body("x", 1))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);

    // The update stream: every change of the client's jobs, as they happen.
    let open = |query: &str| {
        stack
            .http
            .get(format!("{}/api/v1/jobs/stream{query}", stack.base))
            .header("X-Client-Token", CLIENT_TOKEN)
            .send()
    };
    let all = open("").await.unwrap();
    assert_eq!(all.status().as_u16(), 200);
    assert_eq!(
        all.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(stack.create("/jobs/test", echo_body("s", n)).await);
    }
    let text = read_stream(all, |t| {
        ids.iter().all(|id| {
            t.contains(&format!(
                "\"job_id\":\"{id}\",\"blueprint\":\"test_flow\",\"status\":\"finished\""
            ))
        })
    })
    .await;
    assert!(text.contains("event: job"), "{text}");
    // Filtered by id: a waiting job (no worker offers its task) is followed;
    // another job's changes stay out; cancelling it shows up.
    let (_, waiting) = stack.try_create("/jobs/ghost", json!({})).await;
    let waiting = waiting["job_id"].as_str().unwrap().to_string();
    let one = open(&format!("?ids={waiting}")).await.unwrap();
    let other = stack.create("/jobs/test", echo_body("other", 1)).await;
    stack.finished(&other).await;
    let resp = stack
        .http
        .post(format!("{}/api/v1/jobs/{waiting}/cancel", stack.base))
        .header("X-Client-Token", CLIENT_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let text = read_stream(one, |t| t.contains("\"status\":\"cancelled\"")).await;
    assert!(text.contains(&waiting), "{text}");
    assert!(
        !text.contains(&other),
        "another job leaked into a filtered stream: {text}"
    );
    let resp = open("?ids=not-a-uuid").await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
}

/// Workers take tasks over the persistent channel; `kill -9` of the
/// orchestrator in the middle of a load: they reopen it by themselves once
/// it is back, and every accepted job finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_reopen_the_task_channel_after_an_orchestrator_kill() {
    use std::sync::{Arc, Mutex};
    let mut stack = Stack::new();
    stack.start().await;
    let mut w2 = stack.spawn_worker("channel-w2", "w2.log", |_| {});
    let both_open = |n: usize, stack: &Stack, w2: &crate::support::Proc| {
        let (orchestrator, w1) = stack.logs();
        w1.matches("task channel open").count() >= n
            && w2.log_text().matches("task channel open").count() >= n
            && orchestrator.contains(&format!("worker {WORKER_ID} opened its task channel"))
            && orchestrator.contains("worker channel-w2 opened its task channel")
    };
    wait_until("both task channels", Duration::from_secs(60), || async {
        both_open(1, &stack, &w2)
    })
    .await;

    // 12 clients create jobs until 600 are accepted; the orchestrator is
    // killed after 200 and started again on the same database.
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut creators = Vec::new();
    for _ in 0..12 {
        let (accepted, next, base) = (accepted.clone(), next.clone(), stack.base.clone());
        creators.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            while accepted.lock().unwrap().len() < 600 {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                match try_create_echo(&http, &base, n).await {
                    Some(id) => accepted.lock().unwrap().push(id),
                    None => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }));
    }
    wait_until("200 accepted jobs", Duration::from_secs(60), || async {
        accepted.lock().unwrap().len() >= 200
    })
    .await;
    stack.orchestrator.as_mut().unwrap().kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.start_orchestrator();
    stack.wait_ready().await;
    for c in creators {
        c.await.unwrap();
    }
    // Reopened by both workers, on the new process.
    wait_until(
        "both task channels again",
        Duration::from_secs(60),
        || async { both_open(2, &stack, &w2) },
    )
    .await;
    let accepted: Vec<String> = accepted.lock().unwrap().clone();
    for id in &accepted {
        let job = stack.finished(id).await;
        assert_eq!(job["status"], "finished", "{job}");
        assert_eq!(job["result"]["multiplied_by"], 1, "{job}");
    }
    // The tasks went over the channel: no worker fell back to polling.
    let (_, w1_log) = stack.logs();
    for log in [&w1_log, &w2.log_text()] {
        assert!(!log.contains("by HTTP long-poll instead"), "{log}");
        assert!(!log.contains("panicked"), "{log}");
    }
    eprintln!(
        "{} jobs accepted around the kill; all finished",
        accepted.len()
    );
    w2.stop();
}

const NAP_FLOW: &str = r#"
name = "nap"
api_endpoint = "/jobs/nap"
api_version = "v1"
[states.start]
start = true
sleep = { seconds = "initial.secs", next = "echo" }
[states.echo]
dispatch.task = "echo_task"
dispatch.params.message = "'rested'"
dispatch.params.multiply = 1
dispatch.on = { success = "done" }
[states.done]
end = "finished"
"#;

/// A `sleep` state with real processes: the job says it sleeps and until
/// when, survives a kill -9 of the orchestrator while it sleeps, and goes on
/// to its task after its time, on SQLite and on PostgreSQL.
#[tokio::test]
async fn a_sleeping_job_survives_a_kill_and_goes_on_after_its_time() {
    for mut stack in [Stack::new(), Stack::on_postgres().await] {
        stack.add_blueprint("nap", NAP_FLOW);
        stack.start().await;
        let id = stack.create("/jobs/nap", json!({"secs": 3})).await;
        let (_, job) = stack.get(&format!("/api/v1/jobs/{id}")).await;
        assert_eq!(job["status"], "sleeping", "{job}");
        let wake_at = job["wake_at"].as_str().unwrap().to_string();
        assert!(
            job["waiting_reason"]
                .as_str()
                .unwrap()
                .starts_with("sleeping in state start until "),
            "{job}"
        );
        stack.orchestrator.as_mut().unwrap().kill9();
        stack.start_orchestrator();
        stack.wait_ready().await;
        let (_, job) = stack.get(&format!("/api/v1/jobs/{id}")).await;
        assert_eq!(job["status"], "sleeping", "{job}");
        assert_eq!(job["wake_at"], wake_at.as_str(), "{job}");
        let job = stack.finished(&id).await;
        assert_eq!(job["status"], "finished", "{job}");
        assert_eq!(job["result"]["processed_message"], "rested", "{job}");
        let time = |v: &serde_json::Value| {
            chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap()
        };
        let woke = time(&job["state_history"][1]["entered_at"]);
        let due = time(&serde_json::Value::from(wake_at.as_str()));
        assert!(woke >= due, "woke at {woke}, due {due}");
        stack.assert_no_panic();
    }
}

/// A blueprint's input schema, with real processes: a create whose data
/// breaks it gets 400 naming the place; a good one runs.
#[tokio::test]
async fn a_create_that_breaks_the_input_schema_gets_400_naming_the_place() {
    let mut stack = Stack::new();
    stack.add_blueprint(
        "strict",
        r#"
name = "strict"
api_endpoint = "/jobs/strict"
api_version = "v1"
[input_schema]
type = "object"
required = ["message"]
properties.message = { type = "string", maxLength = 20 }
[states.start]
start = true
dispatch.task = "echo_task"
dispatch.params.message = "initial.message"
dispatch.params.multiply = 1
dispatch.on = { success = "done" }
[states.done]
end = "finished"
"#,
    );
    stack.start().await;
    let (status, body) = stack
        .try_create("/jobs/strict", json!({"initial_data": {"message": 7}}))
        .await;
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.starts_with("Input validation failed for blueprint 'strict': /message: "),
        "{error}"
    );
    let id = stack
        .create("/jobs/strict", json!({"initial_data": {"message": "fine"}}))
        .await;
    assert_eq!(stack.finished(&id).await["status"], "finished");
    stack.assert_no_panic();
}
