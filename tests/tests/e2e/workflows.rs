//! The workflow constructs an avtomatika user brings over, with real
//! processes: a map over a list (order kept, `max_in_flight` never
//! exceeded, as the orchestrator's own history shows), a plugin's event
//! moving its job on before the task ends, an approval that survives a
//! restart, and a chain of child jobs three deep (through a restart, and
//! cancelled from the top); on SQLite, and on PostgreSQL with the job created through one
//! instance and the worker (or the approver) on the other.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::{Value, json};

const MAP_FLOW: &str = r#"
name = "echo_map"
api_endpoint = "/jobs/echo_map"
api_version = "v1"
[states.each]
start = true
map.over = "initial.words"
map.task = "echo_task"
map.params.message = "item ~ '#' ~ index"
map.params.multiply = 1
map.max_in_flight = 20
map.next = "count"
map.on_failure = "failed"
[states.count]
goto = [{ when = "results.each.items | length == initial.words | length", to = "done" }]
[states.done]
end = "finished"
[states.failed]
end = "failed"
"#;

const EVENT_FLOW: &str = r#"
name = "early_event"
api_endpoint = "/jobs/early_event"
api_version = "v1"
[states.start]
start = true
dispatch.task = "emit_events"
dispatch.params.events = "initial.events"
dispatch.params.ms = "initial.ms"
dispatch.on = { success = "late" }
dispatch.events = { ready = "early" }
dispatch.retry = { max_attempts = 1 }
[states.early]
end = "finished"
[states.late]
end = "finished"
"#;

const APPROVAL_FLOW: &str = r#"
name = "approve_echo"
api_endpoint = "/jobs/approve_echo"
api_version = "v1"
[states.draft]
start = true
dispatch.task = "echo_task"
dispatch.params.message = "initial.message"
dispatch.on = { success = "review" }
[states.review]
wait = { approval = true, on = { approved = "publish", rejected = "dropped" }, timeout = 3600, on_timeout = "dropped" }
[states.publish]
dispatch.task = "echo_task"
dispatch.params.message = "results.draft.processed_message ~ ' (approved by ' ~ results.review.by ~ ')'"
dispatch.on = { success = "done" }
[states.done]
end = "finished"
[states.dropped]
end = "failed"
"#;

const CHAIN_TOP: &str = r#"
name = "chain_top"
api_endpoint = "/jobs/chain"
api_version = "v1"
[states.start]
start = true
run = { blueprint = "chain_middle", data = { message = "initial.message", work_ms = "initial.work_ms" }, on = { success = "done", failure = "failed" } }
[states.done]
end = "finished"
[states.failed]
end = "failed"
"#;

const CHAIN_MIDDLE: &str = r#"
name = "chain_middle"
[states.start]
start = true
run = { blueprint = "chain_leaf", data = { message = "initial.message ~ ' via middle'", work_ms = "initial.work_ms" }, on = { success = "done" } }
[states.done]
end = "finished"
"#;

const CHAIN_LEAF: &str = r#"
name = "chain_leaf"
[states.work]
start = true
dispatch.task = "echo_task"
dispatch.params.message = "initial.message"
dispatch.params.work_ms = "initial.work_ms"
dispatch.on = { success = "done" }
[states.done]
end = "finished"
"#;

fn add_chain(stack: &Stack) {
    stack.add_blueprint("chain_top", CHAIN_TOP);
    stack.add_blueprint("chain_middle", CHAIN_MIDDLE);
    stack.add_blueprint("chain_leaf", CHAIN_LEAF);
}

/// The child job `id` waits for, once it has one.
async fn child_of(stack: &Stack, id: &str) -> String {
    let mut child = None;
    for _ in 0..300 {
        let (_, job) = stack.get(&format!("/api/v1/jobs/{id}")).await;
        if let Some(c) = job["child_job_id"].as_str() {
            child = Some(c.to_string());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.unwrap_or_else(|| panic!("job {id} started no child"))
}

/// A chain three deep finishes with the leaf's result at the top.
async fn a_chain_finishes(stack: &Stack, message: &str) {
    let id = stack
        .create("/jobs/chain", json!({"message": message, "work_ms": 0}))
        .await;
    let job = stack.finished(&id).await;
    assert_eq!(job["status"], "finished", "{job}");
    let expected = format!("{message} via middle");
    assert_eq!(
        job["result"]["processed_message"],
        expected.as_str(),
        "{job}"
    );
}

/// POSTs `body` to `path` with `headers`: status and JSON answer.
async fn post(stack: &Stack, path: &str, headers: &[(&str, &str)], body: Value) -> (u16, Value) {
    let mut req = stack.http.post(format!("{}{path}", stack.base)).json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A job of APPROVAL_FLOW created on `stack`, once it waits: its id and
/// approval token.
async fn waiting_for_approval(stack: &Stack, message: &str) -> (String, String) {
    let id = stack
        .create("/jobs/approve_echo", json!({"message": message}))
        .await;
    wait_until(
        "the job to wait for a decision",
        Duration::from_secs(30),
        || async {
            stack.get(&format!("/api/v1/jobs/{id}")).await.1["status"] == "waiting_for_human"
        },
    )
    .await;
    let job = stack.get(&format!("/api/v1/jobs/{id}")).await.1;
    assert!(
        job["waiting_reason"]
            .as_str()
            .unwrap()
            .starts_with("waiting in state review for a decision until "),
        "{job}"
    );
    (id, job["approval_token"].as_str().unwrap().to_string())
}

/// Most tasks of `job` queued or running at once, by its history
/// (queued: +1; result, failure or requeue: -1).
async fn most_in_flight(stack: &Stack, job: &str) -> (usize, usize) {
    let (status, history) = stack.get(&format!("/api/v1/jobs/{job}/history")).await;
    assert_eq!(status, 200, "{history}");
    let (mut now, mut most, mut queued) = (0i64, 0i64, 0usize);
    for e in history["events"].as_array().unwrap() {
        match e["event"].as_str().unwrap() {
            "task_queued" => {
                now += 1;
                queued += 1;
            }
            "task_result" | "task_failed" | "task_requeued" => now -= 1,
            _ => {}
        }
        most = most.max(now);
    }
    (most as usize, queued)
}

async fn a_map_of_a_thousand(stack: &Stack) {
    let words: Vec<String> = (0..1000).map(|i| format!("w{i}")).collect();
    let started = Instant::now();
    let id = stack
        .create("/jobs/echo_map", json!({"words": words}))
        .await;
    let job = stack.finished(&id).await;
    eprintln!("a map over 1,000 elements took {:?}", started.elapsed());
    assert_eq!(
        (job["status"].as_str(), job["current_state"].as_str()),
        (Some("finished"), Some("done")),
        "{}",
        rxon::text::clip(&job.to_string(), 2000)
    );
    let items = job["results"]["each"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 1000);
    for (i, item) in items.iter().enumerate() {
        assert_eq!(
            item["processed_message"],
            format!("w{i}#{i}"),
            "element {i}"
        );
    }
    assert_eq!(job["results"]["each"]["failures"], json!([]));
    let (most, queued) = most_in_flight(stack, &id).await;
    eprintln!("at most {most} element tasks in flight");
    assert_eq!(queued, 1000, "one task per element");
    assert!(most <= 20, "{most} in flight, max_in_flight is 20");
    assert!(most >= 10, "only {most} in flight: the map did not fan out");
}

async fn an_event_moves_the_job_before_its_task_ends(stack: &Stack) {
    let started = Instant::now();
    let id = stack
        .create(
            "/jobs/early_event",
            json!({"events": [{"type": "ready", "payload": {"score": 9}}], "ms": 8000}),
        )
        .await;
    let job = stack.finished(&id).await;
    let took = started.elapsed();
    assert_eq!(
        (job["status"].as_str(), job["current_state"].as_str()),
        (Some("finished"), Some("early")),
        "{job}"
    );
    assert_eq!(job["results"]["start"], json!({"score": 9}));
    assert!(
        took < Duration::from_secs(6),
        "the job ended after {took:?}: with the task (8 s), not on the event"
    );
}

fn worker_with_slots(stack: &Stack, id: &str, log: &str, urls: Option<&str>) -> Proc {
    stack.spawn_worker(id, log, |cmd| {
        cmd.args(["--max-concurrent-tasks", "30"]);
        if let Some(urls) = urls {
            cmd.env("ORCHESTRATOR_URL", urls);
        }
    })
}

#[tokio::test]
async fn a_map_keeps_order_and_its_bound_and_a_plugin_event_moves_its_job() {
    let mut stack = Stack::new();
    stack.add_plugin(plugin_fixtures::CHAOS_TASK);
    stack.add_blueprint("echo_map", MAP_FLOW);
    stack.add_blueprint("early_event", EVENT_FLOW);
    stack.start_orchestrator();
    stack.wait_ready().await;
    stack.worker = Some(worker_with_slots(&stack, WORKER_ID, "worker.log", None));
    stack.wait_worker().await;

    a_map_of_a_thousand(&stack).await;
    an_event_moves_the_job_before_its_task_ends(&stack).await;
    // The task is told to stop: its result would be stale.
    wait_until("the task to stop", Duration::from_secs(10), || async {
        stack
            .logs()
            .1
            .contains("its job was cancelled or moved on; its slot is free")
    })
    .await;
    stack.assert_no_panic();
}

#[tokio::test]
async fn worker_events_reach_the_webhook_that_asks_and_the_update_stream() {
    let receiver = free_port();
    let got = webhook_receiver(receiver).await;
    let mut stack = Stack::new();
    stack.add_plugin(plugin_fixtures::CHAOS_TASK);
    stack.add_blueprint("early_event", EVENT_FLOW);
    stack.start_configured("webhook_allowed_hosts = [\"127.0.0.1\"]\n", |_| {});
    stack.wait_ready().await;
    stack.start_worker();
    stack.wait_worker().await;
    let stream = stack
        .http
        .get(format!("{}/api/v1/jobs/stream", stack.base))
        .header("X-Client-Token", CLIENT_TOKEN)
        .send()
        .await
        .unwrap();
    let (status, created) = stack
        .try_create(
            "/jobs/early_event",
            json!({
                "initial_data": {
                    "events": [{"type": "note", "payload": {"n": 1}}, {"type": "ready", "payload": {"score": 9}}],
                    "ms": 4000
                },
                "webhook_url": format!("http://127.0.0.1:{receiver}/hook"),
                "webhook_events": ["*"]
            }),
        )
        .await;
    assert_eq!(status, 202, "{created}");
    let id = created["job_id"].as_str().unwrap().to_string();
    let text = read_stream(stream, |t| t.contains("\"type\":\"ready\"")).await;
    assert!(
        text.contains("\"event\":{\"type\":\"note\",\"payload\":{\"n\":1}}"),
        "{text}"
    );
    wait_until("three webhooks", Duration::from_secs(20), || async {
        got.lock().unwrap().len() >= 3
    })
    .await;
    let hooks = got.lock().unwrap().clone();
    let kinds: Vec<&str> = hooks.iter().map(|h| h["event"].as_str().unwrap()).collect();
    for kind in ["worker_event:note", "worker_event:ready", "job_finished"] {
        assert!(kinds.contains(&kind), "{kinds:?}");
    }
    let ready = hooks
        .iter()
        .find(|h| h["event"] == "worker_event:ready")
        .unwrap();
    assert_eq!(ready["job_id"], id.as_str());
    assert_eq!(ready["payload"], json!({"score": 9}));
    // A bad list is refused, naming the field.
    let (status, body) = stack
        .try_create(
            "/jobs/early_event",
            json!({"initial_data": {}, "webhook_events": ["no good"]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("'webhook_events'"),
        "{body}"
    );
    stack.assert_no_panic();
}

#[tokio::test]
async fn a_plugins_events_are_bounded_and_named_when_refused() {
    let mut stack = Stack::new();
    stack.add_plugin(plugin_fixtures::CHAOS_TASK);
    stack.add_blueprint("one_emit_events", EMIT_FLOW);
    stack.start_orchestrator();
    stack.wait_ready().await;
    stack.start_worker();
    stack.wait_worker().await;
    let answers = |job: &Value| -> Vec<String> {
        job["result"]["answers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect()
    };
    // Each malformed event is refused with the bound it crosses.
    let big = format!("{{\"x\": \"{}\"}}", "a".repeat(70 * 1024));
    let events = json!([
        {"type": "progress", "payload": {}},
        {"type": "bad type!", "payload": {}},
        {"type": "list", "raw": "[1, 2]"},
        {"type": "nested", "raw": "[".repeat(200)},
        {"type": "big", "raw": big},
        {"type": "fine", "payload": {"n": 1}},
    ]);
    let id = stack
        .create(
            "/jobs/one/emit_events",
            json!({"events": events, "repeat": 1, "gap_ms": 0}),
        )
        .await;
    let job = stack.finished(&id).await;
    assert_eq!(job["status"], "finished", "{job}");
    let got = answers(&job);
    assert!(got[0].contains("`progress` is reserved"), "{got:?}");
    assert!(got[1].contains("may only hold"), "{got:?}");
    assert!(got[2].contains("must be a JSON object"), "{got:?}");
    assert!(got[3].contains("MAX_JSON_DEPTH"), "{got:?}");
    assert!(got[4].contains("MAX_EVENT_PAYLOAD"), "{got:?}");
    assert_eq!(got[5], "ok");
    // A noisy plugin gets 100 events out, then the bound per task.
    let id = stack
        .create(
            "/jobs/one/emit_events",
            json!({"events": [{"type": "fine", "payload": {}}], "repeat": 110, "gap_ms": 20}),
        )
        .await;
    let job = stack.finished(&id).await;
    let got = answers(&job);
    assert_eq!(got.iter().filter(|a| *a == "ok").count(), 100, "{got:?}");
    assert!(got[100].contains("MAX_EVENTS_PER_TASK"), "{got:?}");
    let (_, history) = stack.get(&format!("/api/v1/jobs/{id}/history")).await;
    let delivered = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "worker_event")
        .count();
    assert_eq!(
        delivered, 100,
        "every accepted event reaches the job's history"
    );
    stack.assert_no_panic();
}

#[tokio::test]
async fn an_approval_survives_a_restart_and_resumes_on_the_approval_call() {
    let mut stack = Stack::new();
    stack.add_blueprint("approve_echo", APPROVAL_FLOW);
    stack.start_orchestrator();
    stack.wait_ready().await;
    stack.start_worker();
    stack.wait_worker().await;
    let (id, token) = waiting_for_approval(&stack, "draft").await;

    // Refusals, each with its status and a JSON error.
    let approve = format!("/_public/webhooks/approval/{id}");
    let (status, body) = post(&stack, &approve, &[], json!({"decision": "approved"})).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = post(
        &stack,
        &approve,
        &[],
        json!({"decision": "approved", "token": "x"}),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("Invalid approval token"))
    );
    let (status, body) = post(
        &stack,
        &approve,
        &[],
        json!({"decision": "maybe", "token": token}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("approved, rejected"),
        "{body}"
    );
    let signal = format!("/api/v1/jobs/{id}/signal/approved");
    let (status, body) = post(&stack, &signal, &[("X-Client-Token", "wrong")], json!({})).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = post(
        &stack,
        &format!("/api/v1/jobs/{id}/signal/approved"),
        &[("X-Client-Token", CLIENT_TOKEN)],
        json!([1]),
    )
    .await;
    assert_eq!(status, 400, "{body}");

    // The orchestrator restarts while the job waits; it still waits, with
    // the same token.
    stack.orchestrator.as_mut().unwrap().stop();
    stack.start_orchestrator();
    stack.wait_ready().await;
    let (_, job) = stack.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(job["status"], "waiting_for_human", "{job}");
    assert_eq!(job["approval_token"], token.as_str());

    // The approver's call, with the token in the query, resumes it.
    let (status, body) = post(
        &stack,
        &format!("{approve}?token={token}"),
        &[],
        json!({"decision": "approved", "by": "ann"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"status": "approval_received", "job_id": id}));
    let job = stack.finished(&id).await;
    assert_eq!(job["status"], "finished", "{job}");
    assert_eq!(
        job["result"]["processed_message"],
        "draft (approved by ann)"
    );
    assert_eq!(
        job["results"]["review"],
        json!({"decision": "approved", "by": "ann"})
    );
    // Used up, and the job no longer waits.
    let (status, body) = post(
        &stack,
        &approve,
        &[],
        json!({"decision": "approved", "token": token}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = post(
        &stack,
        &signal,
        &[("X-Client-Token", CLIENT_TOKEN)],
        json!({}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    stack.assert_no_panic();
}

#[tokio::test]
async fn a_chain_of_child_jobs_finishes_through_a_restart_and_cancels_from_the_top() {
    let mut stack = Stack::new();
    add_chain(&stack);
    stack.start_orchestrator();
    stack.wait_ready().await;
    stack.start_worker();
    stack.wait_worker().await;
    a_chain_finishes(&stack, "hello").await;

    // Internal blueprints have no endpoint: listed without one, not creatable.
    let (_, list) = stack.get("/api/v1/blueprints").await;
    let leaf = list
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "chain_leaf")
        .unwrap()
        .clone();
    assert_eq!(leaf["endpoint"], Value::Null, "{leaf}");

    // The orchestrator restarts while the leaf's task runs: the chain
    // still finishes, each parent told by its child.
    let id = stack
        .create("/jobs/chain", json!({"message": "again", "work_ms": 3000}))
        .await;
    let middle = child_of(&stack, &id).await;
    let _leaf = child_of(&stack, &middle).await;
    wait_until(
        "the leaf's task to run",
        Duration::from_secs(20),
        || async { stack.logs().1.contains("via middle") },
    )
    .await;
    stack.orchestrator.as_mut().unwrap().stop();
    stack.start_orchestrator();
    stack.wait_ready().await;
    let job = stack.finished(&id).await;
    assert_eq!(job["status"], "finished", "{job}");
    assert_eq!(job["result"]["processed_message"], "again via middle");

    // Cancelling the top cancels the chain and stops the leaf's task.
    let id = stack
        .create("/jobs/chain", json!({"message": "stop", "work_ms": 60000}))
        .await;
    let middle = child_of(&stack, &id).await;
    let leaf = child_of(&stack, &middle).await;
    wait_until(
        "the leaf's task to be taken",
        Duration::from_secs(20),
        || async {
            let (_, job) = stack.get(&format!("/api/v1/jobs/{leaf}")).await;
            job["task_worker_id"].is_string()
        },
    )
    .await;
    let (status, body) = post(
        &stack,
        &format!("/api/v1/jobs/{id}/cancel"),
        &[("X-Client-Token", CLIENT_TOKEN)],
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for (child, parent) in [(&middle, &id), (&leaf, &middle)] {
        let job = stack.finished(child).await;
        assert_eq!(job["status"], "cancelled", "{job}");
        assert_eq!(job["parent_job_id"], parent.as_str(), "{job}");
    }
    wait_until(
        "the leaf's task to stop",
        Duration::from_secs(20),
        || async {
            stack
                .logs()
                .1
                .contains("its job was cancelled or moved on; its slot is free")
        },
    )
    .await;
    stack.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_event_chain_and_approval_flows_run_across_two_instances_on_postgres() {
    let mut a = Stack::on_postgres().await;
    let mut b = Stack::new();
    b.storage = a.storage.clone();
    for stack in [&a, &b] {
        stack.add_plugin(plugin_fixtures::CHAOS_TASK);
        stack.add_blueprint("echo_map", MAP_FLOW);
        stack.add_blueprint("early_event", EVENT_FLOW);
        stack.add_blueprint("approve_echo", APPROVAL_FLOW);
        add_chain(stack);
    }
    a.start_orchestrator();
    a.wait_ready().await;
    b.start_orchestrator();
    b.wait_ready().await;
    // The worker knows instance A only; jobs are created through B.
    a.worker = Some(worker_with_slots(&a, "pg-worker", "worker.log", None));
    wait_until(
        "the worker, seen from B",
        Duration::from_secs(60),
        || async {
            let (_, workers) = b.get("/api/v1/workers").await;
            workers.as_array().is_some_and(|w| !w.is_empty())
        },
    )
    .await;
    a_map_of_a_thousand(&b).await;
    an_event_moves_the_job_before_its_task_ends(&b).await;
    a_chain_finishes(&b, "across").await;
    // Waiting through B, decided through A (by the client, with a signal),
    // after B was stopped.
    let (id, _) = waiting_for_approval(&b, "shared").await;
    b.orchestrator.as_mut().unwrap().stop();
    let (status, body) = post(
        &a,
        &format!("/api/v1/jobs/{id}/signal/approved"),
        &[("X-Client-Token", CLIENT_TOKEN)],
        json!({"by": "bob"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let job = a.finished(&id).await;
    assert_eq!(
        job["result"]["processed_message"], "shared (approved by bob)",
        "{job}"
    );
    a.assert_no_panic();
    b.assert_no_panic();
}

const EMIT_FLOW: &str = r#"
name = "one_emit_events"
api_endpoint = "/jobs/one/emit_events"
api_version = "v1"
[states.start]
start = true
dispatch.task = "emit_events"
dispatch.params.events = "initial.events"
dispatch.params.repeat = "initial.repeat"
dispatch.params.gap_ms = "initial.gap_ms"
dispatch.on = { success = "done" }
dispatch.retry = { max_attempts = 1 }
[states.done]
end = "finished"
"#;
