//! Tasks that require something of their worker, with real worker hosts
//! declaring what they have (`GPU_MODEL`, `GPU_VRAM_GB`,
//! `INSTALLED_SOFTWARE`): a GPU task waits, saying why, until a worker
//! declaring the GPU registers, and is never given to the others, while
//! tasks needing nothing keep flowing to every worker; on SQLite, and on
//! PostgreSQL with the two workers on two instances. And a concurrency key
//! (`max = 2` per customer) holds under 500 jobs of 5 customers through two
//! PostgreSQL instances, by the jobs' own histories, and so does a rate key
//! (10 per second per customer, bursts of 2).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::support::*;
use serde_json::{Value, json};

const GPU_FLOW: &str = r#"
name = "gpu_echo"
api_endpoint = "/jobs/gpu_echo"
api_version = "v1"
[states.start]
start = true
dispatch.task = "echo_task"
dispatch.params.message = "initial.message"
dispatch.params.multiply = 1
dispatch.requires = { resources = { devices = [{ type = "gpu", properties = { vram_gb = ">= 16" } }] }, installed_software = { ffmpeg = "any" } }
dispatch.on = { success = "done" }
[states.done]
end = "finished"
"#;

/// A worker host declaring a 40 GB GPU and ffmpeg.
fn gpu_worker(stack: &Stack, urls: Option<&str>) -> Proc {
    stack.spawn_worker("gpu-worker", "gpu-worker.log", |cmd| {
        cmd.env("GPU_MODEL", "NVIDIA A100")
            .env("GPU_VRAM_GB", "40")
            .env("INSTALLED_SOFTWARE", r#"{"ffmpeg": "6.1"}"#);
        if let Some(urls) = urls {
            cmd.env("ORCHESTRATOR_URL", urls);
        }
    })
}

async fn job(stack: &Stack, id: &str) -> Value {
    stack.get(&format!("/api/v1/jobs/{id}")).await.1
}

/// `creator` takes the jobs; the plain worker is already running, and
/// `start_gpu` starts the GPU worker.
async fn gpu_tasks_wait_for_the_gpu_worker(creator: &Stack, start_gpu: impl FnOnce()) {
    let gpu_jobs: Vec<String> = {
        let mut ids = Vec::new();
        for n in 0..10 {
            ids.push(
                creator
                    .create("/jobs/gpu_echo", json!({"message": format!("gpu{n}")}))
                    .await,
            );
        }
        ids
    };
    // Plain jobs go past them to the worker without a GPU.
    for n in 0..20 {
        let id = creator
            .create("/jobs/test", echo_body(&format!("plain{n}"), 1))
            .await;
        let done = creator.finished(&id).await;
        assert_eq!(done["status"], "finished", "{done}");
        assert_eq!(done["task_worker_id"], WORKER_ID);
    }
    let waiting = job(creator, &gpu_jobs[0]).await;
    assert_eq!(waiting["status"], "waiting_for_worker", "{waiting}");
    let why = waiting["waiting_reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("no registered worker meets what task")
            && why.contains(&format!(
                "{WORKER_ID}: no device matching required device 1"
            )),
        "{why}"
    );
    start_gpu();
    for id in &gpu_jobs {
        let done = creator.finished(id).await;
        assert_eq!(done["status"], "finished", "{done}");
        assert_eq!(done["task_worker_id"], "gpu-worker", "{done}");
    }
}

#[tokio::test]
async fn a_gpu_task_waits_for_the_worker_declaring_the_gpu_and_goes_to_no_other() {
    let mut stack = Stack::new();
    stack.add_blueprint("gpu_echo", GPU_FLOW);
    stack.start_orchestrator();
    stack.wait_ready().await;
    stack.start_worker();
    stack.wait_worker().await;
    let mut gpu = None;
    gpu_tasks_wait_for_the_gpu_worker(&stack, || gpu = Some(gpu_worker(&stack, None))).await;
    // What the GPU worker declared, as the orchestrator shows it.
    let view = stack.worker_view("gpu-worker").await.expect("registered");
    assert_eq!(view["resources"]["devices"][0]["model"], "NVIDIA A100");
    assert_eq!(view["installed_software"]["ffmpeg"], "6.1");
    let mut gpu = gpu.unwrap();
    assert!(!gpu.log_text().contains("panicked"));
    gpu.stop();
    stack.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_the_gpu_worker_on_one_instance_gets_the_gpu_tasks_created_on_the_other() {
    let mut a = Stack::on_postgres().await;
    let mut b = Stack::new();
    b.storage = a.storage.clone();
    for stack in [&a, &b] {
        stack.add_blueprint("gpu_echo", GPU_FLOW);
    }
    a.start_orchestrator();
    a.wait_ready().await;
    b.start_orchestrator();
    b.wait_ready().await;
    // The plain worker on A, the GPU worker on B, jobs created through A.
    a.start_worker();
    a.wait_worker().await;
    let b_url = format!("http://localhost:{}", b.port);
    let mut gpu = None;
    gpu_tasks_wait_for_the_gpu_worker(&a, || gpu = Some(gpu_worker(&b, Some(&b_url)))).await;
    wait_until(
        "the GPU worker, seen from A",
        Duration::from_secs(30),
        || async { a.worker_view("gpu-worker").await.is_some() },
    )
    .await;
    gpu.unwrap().stop();
    a.assert_no_panic();
    b.assert_no_panic();
}

const KEYED_FLOW: &str = r#"
name = "keyed_sleep"
api_endpoint = "/jobs/keyed_sleep"
api_version = "v1"
[states.start]
start = true
dispatch.task = "sleep"
dispatch.params.ms = 20
dispatch.concurrency = { key = "initial.customer", max = 2 }
dispatch.on = { success = "done" }
[states.done]
end = "finished"
"#;

/// Two orchestrators on one PostgreSQL database serving `flow` (as
/// `name`), each with a worker host of 10 slots running the chaos
/// fixture; the second worker is returned (the first is A's).
async fn two_instances(name: &str, flow: &str) -> (Stack, Stack, Proc) {
    let mut a = Stack::on_postgres().await;
    let mut b = Stack::new();
    b.storage = a.storage.clone();
    for stack in [&a, &b] {
        stack.add_plugin(plugin_fixtures::CHAOS_TASK);
        stack.add_blueprint(name, flow);
    }
    a.start_orchestrator();
    a.wait_ready().await;
    b.start_orchestrator();
    b.wait_ready().await;
    let b_url = format!("http://localhost:{}", b.port);
    let slots = |cmd: &mut std::process::Command| {
        cmd.args(["--max-concurrent-tasks", "10"]);
    };
    a.worker = Some(a.spawn_worker(&format!("{name}-a"), &format!("{name}-a.log"), slots));
    let other = b.spawn_worker(&format!("{name}-b"), &format!("{name}-b.log"), |cmd| {
        slots(cmd);
        cmd.env("ORCHESTRATOR_URL", &b_url);
    });
    wait_until(
        "both workers, seen from A",
        Duration::from_secs(60),
        || async {
            let (_, workers) = a.get("/api/v1/workers").await;
            workers.as_array().is_some_and(|w| w.len() == 2)
        },
    )
    .await;
    (a, b, other)
}

/// When each task of `job` was handed out and answered, by its history.
async fn task_span(
    stack: &Stack,
    job: &str,
) -> (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) {
    let (status, history) = stack.get(&format!("/api/v1/jobs/{job}/history")).await;
    assert_eq!(status, 200, "{history}");
    let at = |kind: &str| {
        history["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event"] == kind)
            .and_then(|e| e["at"].as_str())
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or_else(|| panic!("no {kind} in {history}"))
    };
    (at("task_dispatched"), at("task_result"))
}

/// Creates `n` jobs of `endpoint`, one per customer in turn, each round
/// through the other instance (so each customer's go through both), and
/// waits for them to finish; when each task was handed out and answered,
/// per customer.
async fn spans_by_customer<'c>(
    a: &Stack,
    b: &Stack,
    endpoint: &str,
    customers: &[&'c str],
    n: usize,
) -> std::collections::BTreeMap<
    &'c str,
    Vec<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)>,
> {
    let mut jobs = Vec::new();
    for i in 0..n {
        let customer = customers[i % customers.len()];
        let via = if (i / customers.len()).is_multiple_of(2) {
            a
        } else {
            b
        };
        jobs.push((
            customer,
            via.create(endpoint, json!({"customer": customer})).await,
        ));
    }
    let mut spans: std::collections::BTreeMap<&str, Vec<_>> = Default::default();
    for (customer, id) in &jobs {
        let done = a.finished(id).await;
        assert_eq!(done["status"], "finished", "{done}");
        spans
            .entry(*customer)
            .or_default()
            .push(task_span(a, id).await);
    }
    spans
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_key_holds_across_two_instances_on_postgres() {
    // A worker with 10 slots on each instance: 20 slots for 5 customers
    // allowed 2 each.
    let (a, b, mut other) = two_instances("keyed_sleep", KEYED_FLOW).await;
    let customers = ["c0", "c1", "c2", "c3", "c4"];
    let spans = spans_by_customer(&a, &b, "/jobs/keyed_sleep", &customers, 500).await;
    for (customer, spans) in spans {
        // Most tasks of one customer between a hand-out and its result.
        let mut edges: Vec<(chrono::DateTime<chrono::Utc>, i32)> = Vec::new();
        for (start, end) in spans {
            edges.push((start, 1));
            edges.push((end, -1));
        }
        // Ends before starts at one instant: a result frees the room first.
        edges.sort();
        let (mut now, mut most) = (0, 0);
        for (_, d) in edges {
            now += d;
            most = most.max(now);
        }
        assert!(
            most <= 2,
            "customer {customer}: {most} tasks in flight at once"
        );
        assert_eq!(most, 2, "customer {customer} never ran two at once");
    }
    other.stop();
    a.assert_no_panic();
    b.assert_no_panic();
}

const RATED_FLOW: &str = r#"
name = "rated_sleep"
api_endpoint = "/jobs/rated_sleep"
api_version = "v1"
[states.start]
start = true
dispatch.task = "sleep"
dispatch.params.ms = 1
dispatch.rate = { key = "initial.customer", per_second = 10, burst = 2 }
dispatch.on = { success = "done" }
[states.done]
end = "finished"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_key_holds_across_two_instances_on_postgres() {
    let (a, b, mut other) = two_instances("rated_sleep", RATED_FLOW).await;
    let spans = spans_by_customer(&a, &b, "/jobs/rated_sleep", &["c0", "c1"], 40).await;
    for (customer, spans) in spans {
        let mut starts: Vec<_> = spans.into_iter().map(|(start, _)| start).collect();
        starts.sort();
        // Between any two hand-outs of one customer, at most its burst
        // plus 10 per second (50 ms of slack for where each instance
        // reads its clock).
        for i in 0..starts.len() {
            for j in i + 1..starts.len() {
                let secs = (starts[j] - starts[i]).num_microseconds().unwrap() as f64 / 1e6;
                let allowed = 2.0 + 10.0 * (secs + 0.05);
                assert!(
                    (j - i + 1) as f64 <= allowed,
                    "customer {customer}: {} tasks handed out in {secs:.3} s",
                    j - i + 1
                );
            }
        }
        let spread = (starts[starts.len() - 1] - starts[0]).num_milliseconds();
        assert!(
            spread >= 1500,
            "customer {customer}: 20 tasks in {spread} ms"
        );
    }
    other.stop();
    a.assert_no_panic();
    b.assert_no_panic();
}

/// `flow`'s echo task with dispatch `strategy`.
fn strategy_flow(name: &str, strategy: &str) -> String {
    format!(
        r#"
name = "{name}"
api_endpoint = "/jobs/{name}"
api_version = "v1"
[states.start]
start = true
dispatch.task = "echo_task"
dispatch.params.message = "initial.message"
dispatch.params.multiply = 1
dispatch.strategy = "{strategy}"
dispatch.on = {{ success = "done" }}
[states.done]
end = "finished"
"#
    )
}

/// Runs `n` jobs of `endpoint` one after the other, each once both workers
/// wait again; the worker each went to.
async fn one_by_one(stack: &Stack, endpoint: &str, n: usize) -> Vec<String> {
    let mut went = Vec::new();
    for i in 0..n {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let id = stack
            .create(endpoint, json!({"message": format!("m{i}")}))
            .await;
        let done = stack.finished(&id).await;
        assert_eq!(done["status"], "finished", "{done}");
        went.push(done["task_worker_id"].as_str().unwrap().to_string());
    }
    went
}

#[tokio::test]
async fn dispatch_strategies_choose_among_the_waiting_worker_hosts() {
    let mut stack = Stack::new();
    stack.add_blueprint("cheapest_echo", &strategy_flow("cheapest_echo", "cheapest"));
    stack.add_blueprint("rr_echo", &strategy_flow("rr_echo", "round_robin"));
    stack.start_orchestrator();
    stack.wait_ready().await;
    stack.start_worker();
    stack.wait_worker().await;
    // The second declares a cost for echo_task; the first declares none
    // (the most expensive).
    let mut thrifty = stack.spawn_worker("thrifty", "thrifty.log", |cmd| {
        cmd.env("COST_PER_SKILL", r#"{"echo_task": 0.5}"#);
    });
    wait_until("the second worker", Duration::from_secs(60), || async {
        stack.worker_view("thrifty").await.is_some()
    })
    .await;
    let went = one_by_one(&stack, "/jobs/cheapest_echo", 8).await;
    assert!(went.iter().all(|w| w == "thrifty"), "{went:?}");
    let went = one_by_one(&stack, "/jobs/rr_echo", 8).await;
    let to_thrifty = went.iter().filter(|w| *w == "thrifty").count();
    assert!((3..=5).contains(&to_thrifty), "in turn: {went:?}");
    thrifty.stop();
    stack.assert_no_panic();
}

const URGENT_FLOW: &str = r#"
name = "urgent_sleep"
api_endpoint = "/jobs/urgent_sleep"
api_version = "v1"
[states.start]
start = true
dispatch.task = "sleep"
dispatch.params.ms = "initial.ms"
dispatch.priority = "initial.urgency"
dispatch.on = { success = "done" }
[states.done]
end = "finished"
"#;

#[tokio::test]
async fn with_its_one_slot_busy_a_high_priority_task_overtakes_a_hundred_low_ones() {
    let mut stack = Stack::new();
    stack.add_plugin(plugin_fixtures::CHAOS_TASK);
    stack.add_blueprint("urgent_sleep", URGENT_FLOW);
    stack.start_orchestrator();
    stack.wait_ready().await;
    stack.worker = Some(stack.spawn_worker(WORKER_ID, "worker.log", |cmd| {
        cmd.args(["--max-concurrent-tasks", "1"]);
    }));
    stack.wait_worker().await;
    let create = |ms: u64, urgency: i64| {
        let stack = &stack;
        async move {
            stack
                .create("/jobs/urgent_sleep", json!({"ms": ms, "urgency": urgency}))
                .await
        }
    };
    // The slot is busy for a second while 100 low ones queue, then one high.
    let busy = create(1000, 0).await;
    wait_until("the slot to be busy", Duration::from_secs(30), || async {
        job(&stack, &busy).await["task_worker_id"] == WORKER_ID
    })
    .await;
    let mut low = Vec::new();
    for _ in 0..100 {
        low.push(create(5, 0).await);
    }
    let high = create(5, 10).await;
    let done = stack.finished(&high).await;
    assert_eq!(done["status"], "finished", "{done}");
    let high_at = task_span(&stack, &high).await.0;
    let mut before = 0;
    for id in &low {
        assert_eq!(stack.finished(id).await["status"], "finished");
        if task_span(&stack, id).await.0 < high_at {
            before += 1;
        }
    }
    assert_eq!(before, 0, "{before} low task(s) went before the high one");
    stack.assert_no_panic();
}
