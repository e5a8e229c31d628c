//! Seeing and steering the platform, with real processes: a client's cancel
//! stops the WASM task on the worker, a task's progress reaches the job, the
//! CLI, the metrics of both binaries, and the OpenAPI document.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::json;

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
                .contains("its job was cancelled or moved on; its slot is free")
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
            .env("PLUGIN_CHAOS_TASK__API_KEY", SECRET);
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

/// Runs `taskctl` against the stack; stdout, stderr and success.
fn taskctl(stack: &Stack, args: &[&str]) -> (String, String, bool) {
    let out = std::process::Command::new(binary("taskctl"))
        .args(args)
        .env("TASKCTL_URL", &stack.base)
        .env("TASKCTL_TOKEN", CLIENT_TOKEN)
        .env(
            "TASKCTL_CONFIG",
            stack.dir.path().join("no-such-config.toml"),
        )
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

#[tokio::test]
async fn the_cli_submits_waits_lists_and_cancels() {
    let stack = chaos_stack("2").await;
    // The acceptance line, as written: the finished job is printed.
    let (out, err, ok) = taskctl(
        &stack,
        &[
            "jobs",
            "submit",
            "test",
            "--data",
            r#"{"message":"Hello World","multiply":3}"#,
            "--wait",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("status     finished"), "{out}");
    assert!(out.contains("Hello World Hello World Hello World"), "{out}");
    // --json parses, and is the job.
    let (out, err, ok) = taskctl(
        &stack,
        &[
            "--json",
            "jobs",
            "submit",
            "test",
            "--data",
            r#"{"message":"hi","multiply":2}"#,
            "--wait",
        ],
    );
    assert!(ok, "{err}");
    let job: serde_json::Value = serde_json::from_str(&out).expect("--json output parses");
    assert_eq!(job["status"], "finished");
    assert_eq!(job["result"]["processed_message"], "hi hi");
    let id = job["job_id"].as_str().unwrap().to_string();
    for args in [
        vec!["--json", "jobs", "get", id.as_str()],
        vec!["--json", "jobs", "history", id.as_str()],
        vec!["--json", "jobs", "list", "--blueprint", "test_flow"],
        vec!["--json", "workers"],
        vec!["--json", "blueprints"],
        vec!["--json", "plugins", "list"],
    ] {
        let (out, err, ok) = taskctl(&stack, &args);
        assert!(ok, "{args:?}: {err}");
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"));
    }
    // Tables for people.
    let (out, _, _) = taskctl(&stack, &["jobs", "list", "--status", "finished"]);
    assert!(out.starts_with("JOB"), "{out}");
    assert_eq!(out.lines().count(), 3, "two finished jobs: {out}");
    let (out, _, _) = taskctl(&stack, &["workers"]);
    assert!(out.contains(WORKER_ID) && out.contains("0/2"), "{out}");
    // Submit without waiting, then cancel from the CLI.
    let (out, err, ok) = taskctl(&stack, &["jobs", "submit", "one_spin_forever"]);
    assert!(ok, "{err}");
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    let (out, err, ok) = taskctl(&stack, &["jobs", "cancel", &id]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("job {id} cancelled"));
    // Errors are clear and fail the command.
    let (_, err, ok) = taskctl(&stack, &["jobs", "submit", "nope"]);
    assert!(!ok);
    assert!(err.contains("no blueprint named \"nope\""), "{err}");
    let (_, err, ok) = taskctl(&stack, &["jobs", "cancel", &id]);
    assert!(!ok);
    assert!(
        err.contains("409") && err.contains("already ended with status cancelled"),
        "{err}"
    );
    let (_, err, ok) = taskctl(&stack, &["jobs", "submit", "test", "--data", "{oops"]);
    assert!(!ok && err.contains("--data is not JSON"), "{err}");
}

/// The value of the first sample of `series` whose labels contain every
/// `label` (`name="value"`), from a Prometheus text page.
fn sample(page: &str, series: &str, labels: &[&str]) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(series) && l[series.len()..].starts_with(['{', ' ']))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_of_both_binaries_move_with_the_work() {
    let mut stack = Stack::new();
    stack.start_orchestrator();
    stack.wait_ready().await;
    let metrics_port = free_port();
    stack.worker = Some(stack.spawn_worker(WORKER_ID, "worker.log", |cmd| {
        cmd.args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")]);
    }));
    stack.wait_worker().await;
    let scrape = |url: String| {
        let http = stack.http.clone();
        async move {
            let resp = http.get(url).send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 200);
            assert!(
                resp.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("text/plain")
            );
            resp.text().await.unwrap()
        }
    };
    let orchestrator_url = format!("{}/metrics", stack.base);
    let worker_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let created = |page: &str| {
        sample(
            page,
            "orchestrator_jobs_created_total",
            &[r#"blueprint="test_flow""#],
        )
        .unwrap_or(0.0)
    };
    let before = scrape(orchestrator_url.clone()).await;
    // Ten echo jobs and one that fails for good (failing_flow: 4 attempts).
    let mut ids = Vec::new();
    for n in 1..=10 {
        ids.push(stack.create("/jobs/test", echo_body("m", n)).await);
    }
    let failing = stack.create("/jobs/failing", json!({"message": "x"})).await;
    for id in &ids {
        assert_eq!(stack.finished(id).await["status"], "finished");
    }
    let failed = stack.finished(&failing).await;
    assert_ne!(failed["status"], "finished", "{failed}");
    let page = scrape(orchestrator_url.clone()).await;
    assert_eq!(created(&page) - created(&before), 10.0, "{page}");
    let ended = sample(
        &page,
        "orchestrator_jobs_ended_total",
        &[r#"blueprint="test_flow""#, r#"status="finished""#],
    );
    assert_eq!(ended, Some(10.0), "{page}");
    assert!(
        sample(
            &page,
            "orchestrator_job_duration_seconds_count",
            &[r#"status="finished""#]
        ) >= Some(10.0),
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            "orchestrator_task_results_total",
            &[r#"task_type="echo_task""#, r#"outcome="success""#]
        ),
        Some(10.0),
        "{page}"
    );
    assert!(
        sample(
            &page,
            "orchestrator_task_results_total",
            &[r#"task_type="failing_task""#]
        ) >= Some(1.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, "orchestrator_workers", &[]),
        Some(1.0),
        "{page}"
    );
    assert!(
        sample(
            &page,
            "orchestrator_http_request_duration_seconds_count",
            &[
                r#"route="/api/v1/jobs/test""#,
                r#"method="POST""#,
                r#"status="202""#
            ]
        ) >= Some(10.0),
        "{page}"
    );
    assert!(
        page.contains(r#"route="/api/{version}/jobs/{id}""#),
        "job reads are one series, not one per id: {page}"
    );
    let worker = scrape(worker_url.clone()).await;
    assert_eq!(
        sample(
            &worker,
            "worker_tasks_total",
            &[
                r#"plugin="echo_task""#,
                r#"skill="echo_task""#,
                r#"outcome="success""#
            ]
        ),
        Some(10.0),
        "{worker}"
    );
    assert!(
        sample(&worker, "worker_sandbox_instantiate_seconds_count", &[]) >= Some(11.0),
        "{worker}"
    );
    assert!(
        sample(
            &worker,
            "worker_plugin_loads_total",
            &[r#"outcome="compiled""#]
        ) >= Some(2.0)
            || sample(
                &worker,
                "worker_plugin_loads_total",
                &[r#"outcome="cached""#]
            ) >= Some(2.0),
        "{worker}"
    );
    assert_eq!(
        sample(&worker, "worker_task_channel_open", &[]),
        Some(1.0),
        "{worker}"
    );
    // The last result may still be on its way back when the job ends.
    wait_until("no task in flight", Duration::from_secs(10), || async {
        let page = scrape(worker_url.clone()).await;
        sample(&page, "worker_tasks_in_flight", &[]) == Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn the_openapi_document_is_valid_3_1_and_covers_every_client_endpoint() {
    let mut stack = Stack::new();
    stack.start_orchestrator();
    stack.wait_ready().await;
    // Public: it describes the API, not its data.
    let resp = stack
        .http
        .get(format!("{}/api/openapi.json", stack.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let doc: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut expected = vec![
        ("get", "/api/v1/jobs".to_string()),
        ("get", "/api/v1/jobs/{id}".into()),
        ("post", "/api/v1/jobs/{id}/cancel".into()),
        ("get", "/api/v1/jobs/{id}/history".into()),
        ("get", "/api/v1/jobs/stream".into()),
        ("get", "/api/v1/workers".into()),
        ("get", "/api/v1/blueprints".into()),
        ("get", "/api/v1/blueprints/{name}".into()),
        ("put", "/api/v1/blueprints/{name}".into()),
        ("get", "/api/v1/plugins".into()),
        ("post", "/api/v1/plugins".into()),
        ("post", "/api/v1/plugins/{name}/rollback".into()),
        ("delete", "/api/v1/plugins/{name}".into()),
    ];
    // One create operation per blueprint served.
    let (_, blueprints) = stack.get("/api/v1/blueprints").await;
    for bp in blueprints.as_array().unwrap() {
        expected.push(("post", bp["endpoint"].as_str().unwrap().to_string()));
    }
    for (method, path) in &expected {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is not in the document"
        );
    }
    // Checked by a real validator (openapi-spec-validator, from PyPI).
    let python = repo().join("target/compat/venv-tools/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run ./scripts/compat-venvs.sh",
        python.display()
    );
    let file = stack.dir.path().join("openapi.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import json, sys\nfrom openapi_spec_validator import validate\nvalidate(json.load(open(sys.argv[1])))",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The page that renders it.
    let page = stack
        .http
        .get(format!("{}/api/docs", stack.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().await.unwrap().contains("/api/openapi.json"));
}

#[tokio::test]
async fn the_worker_hosts_health_follows_its_registration_and_heartbeats() {
    let mut stack = Stack::new();
    let probe_port = free_port();
    let probe = format!("http://127.0.0.1:{probe_port}/health");
    // Started before the orchestrator, with no WORKER_ID: a generated id.
    stack.worker = Some(stack.spawn_worker(WORKER_ID, "worker.log", |cmd| {
        cmd.env_remove("WORKER_ID")
            .args(["--metrics-listen", &format!("127.0.0.1:{probe_port}")]);
    }));
    let health = |http: reqwest::Client, url: String| async move {
        match http.get(&url).send().await {
            Ok(r) => (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            ),
            Err(_) => (0, serde_json::Value::Null),
        }
    };
    wait_until("the probe to answer", Duration::from_secs(30), || async {
        health(stack.http.clone(), probe.clone()).await.0 == 503
    })
    .await;
    let (_, body) = health(stack.http.clone(), probe.clone()).await;
    assert_eq!(body["status"], "starting", "{body}");
    let id = body["worker_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("worker-") && id.len() > 20, "{id}");
    stack.start_orchestrator();
    stack.wait_ready().await;
    wait_until(
        "the worker to be ready",
        Duration::from_secs(30),
        || async { health(stack.http.clone(), probe.clone()).await.0 == 200 },
    )
    .await;
    // Registered under the generated id, with its usage from heartbeats.
    wait_until("its usage to show", Duration::from_secs(10), || async {
        let (_, workers) = stack.get("/api/v1/workers").await;
        workers.as_array().is_some_and(|w| {
            w.iter().any(|w| {
                w["worker_id"] == id.as_str()
                    && w["usage"]["ram_used_gb"].as_f64().is_some_and(|g| g > 0.0)
            })
        })
    })
    .await;
    // The orchestrator goes away: after three missed heartbeats, unhealthy.
    stack.orchestrator.as_mut().unwrap().stop();
    wait_until(
        "the worker to report itself unhealthy",
        Duration::from_secs(20),
        || async { health(stack.http.clone(), probe.clone()).await.0 == 503 },
    )
    .await;
    let (_, body) = health(stack.http.clone(), probe.clone()).await;
    assert_eq!(body["status"], "unhealthy", "{body}");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .starts_with("no heartbeat accepted for")
    );
}

#[tokio::test]
async fn a_client_past_its_plans_rate_or_active_jobs_gets_429_and_others_are_untouched() {
    let stack = orchestrator_with(
        "[plans.free]\nrequests_per_second = 1\nburst = 3\nmax_active_jobs = 2\n\
         [clients.small]\ntoken = \"small-token\"\nplan = \"free\"\n\
         [clients.big]\ntoken = \"big-token\"\n",
    )
    .await;
    let get = |token: &'static str| {
        let (http, base) = (stack.http.clone(), stack.base.clone());
        async move {
            http.get(format!("{base}/api/v1/jobs"))
                .header("X-Client-Token", token)
                .send()
                .await
                .unwrap()
        }
    };
    for _ in 0..3 {
        assert_eq!(get("small-token").await.status().as_u16(), 200);
    }
    let refused = get("small-token").await;
    assert_eq!(refused.status().as_u16(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("client small (plan free) may make 1 per second"),
        "{body}"
    );
    // Another client's requests are untouched.
    for _ in 0..10 {
        assert_eq!(get("big-token").await.status().as_u16(), 200);
    }
    // Its plan's active jobs: two wait (no worker), the third is refused.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let create = |n: u32| {
        let (http, base) = (stack.http.clone(), stack.base.clone());
        async move {
            http.post(format!("{base}/api/v1/jobs/ghost"))
                .header("X-Client-Token", "small-token")
                .json(&json!({"n": n}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(create(1).await, 202);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(create(2).await, 202);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(create(3).await, 429);
}

const QUOTAS: &str = "[plans.metered]\nmonthly_jobs = 3\n\
     [clients.metered]\ntoken = \"metered-token\"\nplan = \"metered\"\n\
     [clients.chatty]\ntoken = \"chatty-token\"\nmonthly_attempts = 5\n";

/// `POST /jobs/test` as `token`: its status, `Retry-After` and body.
async fn create_as(stack: &Stack, token: &str, n: u32) -> (u16, Option<u64>, serde_json::Value) {
    let response = stack
        .http
        .post(format!("{}/api/v1/jobs/test", stack.base))
        .header("X-Client-Token", token)
        .json(&echo_body(&format!("q{n}"), 1))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (status, retry, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn a_client_past_its_monthly_quota_gets_429_until_the_month_ends_even_after_a_restart() {
    let mut stack = Stack::new();
    stack.start_configured(QUOTAS, |_| {});
    stack.wait_ready().await;
    stack.start_worker();
    stack.wait_worker().await;
    let mut jobs = Vec::new();
    for n in 0..3 {
        let (status, _, body) = create_as(&stack, "metered-token", n).await;
        assert_eq!(status, 202, "{body}");
        jobs.push(body["job_id"].as_str().unwrap().to_string());
    }
    let (status, retry, body) = create_as(&stack, "metered-token", 3).await;
    assert_eq!(status, 429, "{body}");
    assert!(
        retry.is_some_and(|s| (1..=31 * 86_400).contains(&s)),
        "{retry:?}"
    );
    let why = body["error"].as_str().unwrap();
    assert!(
        why.contains("client metered (plan metered) may make 3 jobs created a month"),
        "{why}"
    );
    // Its jobs run on; another client creates as it likes.
    for id in &jobs {
        let done = stack.finished_as(id, "metered-token").await;
        assert_eq!(done["status"], "finished", "{done}");
    }
    for n in 0..5 {
        assert_eq!(create_as(&stack, CLIENT_TOKEN, n).await.0, 202);
    }
    // Requests: five a month, the sixth refused.
    for _ in 0..5 {
        assert_eq!(stack.get_as("/api/v1/jobs", "chatty-token").await.0, 200);
    }
    let (status, body) = stack.get_as("/api/v1/jobs", "chatty-token").await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("client chatty may make 5 requests a month"),
        "{body}"
    );
    // The counts are in storage (added each second): a restart keeps them.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stack.orchestrator.as_mut().unwrap().stop();
    stack.start_configured(QUOTAS, |_| {});
    stack.wait_ready().await;
    assert_eq!(create_as(&stack, "metered-token", 9).await.0, 429);
    assert_eq!(stack.get_as("/api/v1/jobs", "chatty-token").await.0, 429);
    assert_eq!(create_as(&stack, CLIENT_TOKEN, 9).await.0, 202);
    stack.assert_no_panic();
}

#[tokio::test]
async fn a_monthly_quota_is_shared_by_two_instances_on_postgres() {
    let config = "[clients.metered]\ntoken = \"metered-token\"\nmonthly_jobs = 4\n";
    let mut a = Stack::on_postgres().await;
    let mut b = Stack::new();
    b.storage = a.storage.clone();
    a.start_configured(config, |_| {});
    a.wait_ready().await;
    b.start_configured(config, |_| {});
    b.wait_ready().await;
    for n in 0..2 {
        assert_eq!(create_as(&a, "metered-token", n).await.0, 202);
    }
    // Once A added its count (each second), B sees it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for n in 2..4 {
        assert_eq!(create_as(&b, "metered-token", n).await.0, 202);
    }
    assert_eq!(create_as(&b, "metered-token", 4).await.0, 429);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, _, body) = create_as(&a, "metered-token", 5).await;
    assert_eq!(status, 429, "{body}");
    // Others are untouched.
    assert_eq!(create_as(&a, CLIENT_TOKEN, 6).await.0, 202);
    a.assert_no_panic();
    b.assert_no_panic();
}
