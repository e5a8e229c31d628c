//! Compatibility with the real avtomatika packages from PyPI, both directions:
//! 1. our worker host ↔ the avtomatika 1.0b30 orchestrator;
//! 2. an avtomatika-worker 1.0b20 SDK worker ↔ our orchestrator;
//! 3. a mixed fleet (our worker host + a Python worker) on our orchestrator.
//!
//! The Python side runs from the venvs made by `scripts/compat-venvs.sh`
//! (part of `scripts/test.sh`). If that script found PyPI unreachable, these
//! tests print a loud SKIPPED line and pass; any other missing piece fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::*;
use serde_json::{Value, json};

const TOKEN: &str = "compat-worker-token";
const CLIENT: &str = "compat-client-token";
/// `ORCHESTRATOR_SECRET_KEY`, set on both sides as in production: the
/// orchestrator signs every task (`sig`) and the worker refuses unsigned ones.
const SECRET: &str = "compat-secret";

/// The venv's python, or `None` (after a loud message) when PyPI was unreachable.
fn venv_python(name: &str) -> Option<PathBuf> {
    let dir = repo().join("target/compat");
    if let Ok(reason) = std::fs::read_to_string(dir.join("SKIPPED")) {
        eprintln!("\n!!!!!!!!!! SKIPPED: {} !!!!!!!!!!\n", reason.trim());
        return None;
    }
    let python = dir.join(name).join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run ./scripts/compat-venvs.sh (./scripts/test.sh does)",
        python.display()
    );
    Some(python)
}

struct Http {
    base: String,
    http: reqwest::Client,
}

impl Http {
    fn new(port: u16) -> Self {
        Self {
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .header("X-Client-Token", CLIENT)
            .send()
            .await;
        match resp {
            Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
            Err(_) => (0, Value::Null),
        }
    }

    async fn create(&self, endpoint: &str, initial_data: Value) -> String {
        let resp = self
            .http
            .post(format!("{}/api/v1{endpoint}", self.base))
            .header("X-Client-Token", CLIENT)
            .json(&json!({"initial_data": initial_data}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 202);
        resp.json::<Value>().await.unwrap()["job_id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn wait_up(&self) {
        wait_listening(&self.http, &self.base, Duration::from_secs(60)).await;
    }

    async fn wait_worker(&self, id: &str) {
        wait_until(
            &format!("worker {id} to register"),
            Duration::from_secs(60),
            || async {
                let (_, workers) = self.get("/api/v1/workers").await;
                workers
                    .as_array()
                    .is_some_and(|a| a.iter().any(|w| w["worker_id"] == id))
            },
        )
        .await;
    }

    /// Polls (avtomatika has no server-side wait) until the job is terminal.
    async fn terminal(&self, id: &str) -> Value {
        let mut job = Value::Null;
        for _ in 0..300 {
            job = self.get(&format!("/api/v1/jobs/{id}")).await.1;
            if ["finished", "failed", "quarantined", "cancelled"]
                .contains(&job["status"].as_str().unwrap_or_default())
            {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("job {id} did not end: {job}");
    }
}

fn start_avtomatika(dir: &Path, port: u16) -> Proc {
    let python = venv_python("venv-orchestrator").unwrap();
    let mut cmd = Command::new(python);
    cmd.arg(repo().join("tests/compat/avtomatika_orchestrator.py"))
        .env("API_HOST", "127.0.0.1")
        .env("API_PORT", port.to_string())
        .env("CLIENT_TOKEN", CLIENT)
        .env("GLOBAL_WORKER_TOKEN", TOKEN)
        .env("ORCHESTRATOR_SECRET_KEY", SECRET)
        .env("LOG_FORMAT", "text")
        .env("DETAILED_API_RESPONSES", "true")
        .env("WATCHER_INTERVAL_SECONDS", "2");
    Proc::spawn("avtomatika", cmd, dir.join("avtomatika.log"))
}

fn start_our_worker(
    dir: &Path,
    port: u16,
    id: &str,
    with_chaos: bool,
    secret: Option<&str>,
) -> Proc {
    let plugins = dir.join(format!("plugins-{id}"));
    std::fs::create_dir_all(&plugins).unwrap();
    let mut files = vec![plugin_fixtures::ECHO_TASK, plugin_fixtures::FAILING_TASK];
    if with_chaos {
        files.push(plugin_fixtures::CHAOS_TASK);
    }
    for p in files {
        std::fs::copy(p, plugins.join(Path::new(p).file_name().unwrap())).unwrap();
    }
    let mut cmd = Command::new(binary("worker-host"));
    cmd.env("ORCHESTRATOR_URL", format!("http://127.0.0.1:{port}"))
        .env("WORKER_ID", id)
        .env("WORKER_TOKEN", TOKEN)
        .args([
            "--max-concurrent-tasks",
            "2",
            "--heartbeat-interval",
            "2",
            "--plugins-dir",
        ])
        .arg(&plugins);
    if let Some(secret) = secret {
        cmd.env("ORCHESTRATOR_SECRET_KEY", secret);
    }
    Proc::spawn(id, cmd, dir.join(format!("{id}.log")))
}

fn start_python_worker(
    dir: &Path,
    port: u16,
    id: &str,
    prefix: &str,
    secret: Option<&str>,
) -> Proc {
    start_python_worker_env(dir, port, id, prefix, secret, &[])
}

/// [`start_python_worker`] with more of the SDK's environment (e.g. what
/// it declares: `GPU_MODEL`, `GPU_VRAM_GB`).
fn start_python_worker_env(
    dir: &Path,
    port: u16,
    id: &str,
    prefix: &str,
    secret: Option<&str>,
    env: &[(&str, &str)],
) -> Proc {
    let python = venv_python("venv-worker").unwrap();
    let mut cmd = Command::new(python);
    cmd.arg(repo().join("tests/compat/python_worker.py"))
        .env("ORCHESTRATOR_URL", format!("http://127.0.0.1:{port}"))
        .env("WORKER_ID", id)
        .env("WORKER_TOKEN", TOKEN)
        .env("HEARTBEAT_INTERVAL", "1")
        .env("PY_SKILL_PREFIX", prefix);
    if let Some(secret) = secret {
        // The SDK verifies `sig` when it has the secret (REQUIRE_TASK_SIGNATURE
        // defaults to true, so an unsigned task is dropped).
        cmd.env("ORCHESTRATOR_SECRET_KEY", secret);
    }
    cmd.envs(env.iter().copied());
    Proc::spawn(id, cmd, dir.join(format!("{id}.log")))
}

const PY_FLOWS: &[(&str, &str)] = &[
    (
        "py_files_flow.toml",
        r#"
name = "py_files_flow"
api_endpoint = "/jobs/py-files"
api_version = "v1"
[states.start]
start = true
wait.on = { go = "hash" }
[states.hash]
dispatch.task = "py_sha256"
dispatch.params.input = "results.start.input"
dispatch.on = { success = "read" }
[states.read]
dispatch.task = "py_read"
dispatch.params.digest_file = "results.hash.digest_file"
dispatch.params.empty_file = "results.hash.empty_file"
dispatch.on = { success = "done" }
[states.done]
end = "finished"
"#,
    ),
    (
        "py_gpu_flow.toml",
        r#"
name = "py_gpu_flow"
api_endpoint = "/jobs/py-gpu"
api_version = "v1"
[states.start]
start = true
dispatch.task = "echo_task"
dispatch.params.message = "initial.message"
dispatch.params.multiply = 1
dispatch.requires = { resources = { devices = [{ type = "gpu", model = "rtx", properties = { memory_gb = 16 } }] } }
dispatch.on = { success = "done" }
[states.done]
end = "finished"
"#,
    ),
    (
        "py_parent_flow.toml",
        r#"
name = "py_parent_flow"
api_endpoint = "/jobs/py-parent"
api_version = "v1"
[states.start]
start = true
run = { blueprint = "py_child_flow", data = { message = "initial.message" }, on = { success = "done" } }
[states.done]
end = "finished"
"#,
    ),
    (
        "py_child_flow.toml",
        r#"
name = "py_child_flow"
[states.start]
start = true
dispatch.task = "echo_task"
dispatch.params.message = "initial.message"
dispatch.params.multiply = 2
dispatch.on = { success = "done" }
[states.done]
end = "finished"
"#,
    ),
    (
        "py_map_flow.toml",
        r#"
name = "py_map_flow"
api_endpoint = "/jobs/py-map"
api_version = "v1"
[states.each]
start = true
map.over = "initial.words"
map.task = "echo_task"
map.params.message = "item"
map.params.multiply = "index + 1"
map.max_in_flight = 4
map.next = "done"
[states.done]
end = "finished"
"#,
    ),
    (
        "py_approval_flow.toml",
        r#"
name = "py_approval_flow"
api_endpoint = "/jobs/py-approval"
api_version = "v1"
[states.draft]
start = true
dispatch.task = "echo_task"
dispatch.params.message = "initial.message"
dispatch.on = { success = "review" }
[states.review]
wait = { approval = true, on = { approved = "publish", rejected = "dropped" } }
[states.publish]
dispatch.task = "echo_task"
dispatch.params.message = "results.draft.processed_message ~ ' ok'"
dispatch.on = { success = "done" }
[states.done]
end = "finished"
[states.dropped]
end = "failed"
"#,
    ),
    (
        "py_event_flow.toml",
        r#"
name = "py_event_flow"
api_endpoint = "/jobs/py-event"
api_version = "v1"
[states.start]
start = true
dispatch.task = "py_event"
dispatch.params.score = "initial.score"
dispatch.params.sleep = 8
dispatch.on = { success = "late" }
dispatch.events = { ready = "early" }
[states.early]
goto = [{ when = "results.start.score > 5", to = "high" }, { to = "low" }]
[states.high]
end = "finished"
[states.low]
end = "finished"
[states.late]
end = "finished"
"#,
    ),
    (
        "py_fail_flow.toml",
        r#"
name = "py_fail_flow"
api_endpoint = "/jobs/py-fail"
api_version = "v1"
[states.start]
start = true
dispatch.task = "py_fail"
dispatch.on = { success = "done", failure = "failed" }
dispatch.retry = { max_attempts = 2, initial_backoff_ms = 200 }
[states.done]
end = "finished"
[states.failed]
end = "failed"
"#,
    ),
    (
        "mixed_flow.toml",
        r#"
name = "mixed_flow"
api_endpoint = "/jobs/mixed"
api_version = "v1"
[states.start]
start = true
dispatch.task = "echo_task"
dispatch.params.message = "initial.message"
dispatch.params.multiply = 2
dispatch.on = { success = "python_step" }
[states.python_step]
dispatch.task = "py_echo_task"
dispatch.params.message = "results.start.processed_message"
dispatch.params.multiply = 2
dispatch.on = { success = "done" }
[states.done]
end = "finished"
"#,
    ),
];

fn start_our_orchestrator(dir: &Path, port: u16, secret: Option<&str>) -> Proc {
    start_our_orchestrator_with(dir, port, secret, |_| {})
}

fn start_our_orchestrator_with(
    dir: &Path,
    port: u16,
    secret: Option<&str>,
    configure: impl FnOnce(&mut Command),
) -> Proc {
    let blueprints = dir.join("blueprints");
    std::fs::create_dir_all(&blueprints).unwrap();
    std::fs::copy(
        repo().join("blueprints/test_flow.toml"),
        blueprints.join("test_flow.toml"),
    )
    .unwrap();
    for (name, text) in PY_FLOWS {
        std::fs::write(blueprints.join(name), text).unwrap();
    }
    let mut cmd = Command::new(binary("orchestrator"));
    cmd.args([
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--storage",
        "memory",
        "--blueprints-dir",
    ])
    .arg(&blueprints)
    .env("CLIENT_TOKEN", CLIENT)
    .env("GLOBAL_WORKER_TOKEN", TOKEN);
    if let Some(secret) = secret {
        cmd.env("ORCHESTRATOR_SECRET_KEY", secret);
    }
    configure(&mut cmd);
    let n = std::fs::read_dir(dir).unwrap().count();
    Proc::spawn(
        "orchestrator",
        cmd,
        dir.join(format!("orchestrator-{n}.log")),
    )
}

#[tokio::test]
async fn our_worker_host_serves_the_real_avtomatika_orchestrator() {
    if venv_python("venv-orchestrator").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _avtomatika = start_avtomatika(dir.path(), port);
    let api = Http::new(port);
    api.wait_up().await;
    // Production configuration: our worker verifies avtomatika's `sig`.
    let worker = start_our_worker(dir.path(), port, "wasm-worker-1", true, Some(SECRET));
    api.wait_worker("wasm-worker-1").await;

    for n in 1..=3u64 {
        let id = api
            .create(
                "/jobs/test",
                json!({"message": "Hello World", "multiply": n}),
            )
            .await;
        let job = api.terminal(&id).await;
        assert_eq!(job["status"], "finished", "{job}");
        let expected = vec!["Hello World"; n as usize].join(" ");
        // avtomatika's `result` is the last key of the merged data: processed_message.
        assert_eq!(job["result"], expected.as_str(), "{job}");
        assert_eq!(job["state_history"]["multiplied_by"], n);
        assert_eq!(job["task_worker_id"], "wasm-worker-1");
    }

    // TRANSIENT_ERROR reaches avtomatika: it retries (4 attempts), then quarantines.
    let id = api.create("/jobs/failing", json!({})).await;
    let job = api.terminal(&id).await;
    assert_eq!(job["status"], "quarantined", "{job}");
    let msg = job["error_message"].as_str().unwrap();
    assert!(
        msg.contains("failed after 4 attempts: Intentional failure for testing"),
        "{msg}"
    );

    // A crashing plugin is a PERMANENT_ERROR: quarantined at once, code in the message.
    let id = api.create("/jobs/any", json!({"task": "panic"})).await;
    let job = api.terminal(&id).await;
    assert_eq!(job["status"], "quarantined", "{job}");
    let msg = job["error_message"].as_str().unwrap();
    assert!(
        msg.starts_with("Task failed with permanent error (PERMANENT_ERROR): plugin crashed"),
        "{msg}"
    );
    assert!(msg.contains("chaos_task was asked to panic"), "{msg}");

    // A custom status is passed through and follows its transition.
    let id = api
        .create(
            "/jobs/any",
            json!({"task": "custom_status", "params": {"doc": 1}}),
        )
        .await;
    let job = api.terminal(&id).await;
    assert_eq!(job["status"], "finished", "{job}");
    assert_eq!(job["state_history"]["reviewed"], false);

    // Our input schema is enforced by avtomatika itself before dispatch.
    let id = api
        .create("/jobs/test", json!({"message": "x", "multiply": "three"}))
        .await;
    let job = api.terminal(&id).await;
    assert_eq!(job["status"], "quarantined", "{job}");
    assert!(
        job["error_message"]
            .as_str()
            .unwrap()
            .contains("schema_validation_failed"),
        "{job}"
    );
    // Every task carried a valid signature.
    let log = worker.log_text();
    assert!(!log.contains("refusing task"), "{log}");
    // avtomatika serves /_worker/ws/{id} but not our channel: the worker
    // fell back to the long-poll (and said so) once, and never reopened it.
    assert_eq!(
        log.matches("the orchestrator offers no task channel")
            .count(),
        1,
        "{log}"
    );
    assert!(
        log.contains("taking tasks by HTTP long-poll instead"),
        "{log}"
    );
    assert!(!log.contains("task channel open"), "{log}");
}

#[tokio::test]
async fn the_real_python_sdk_worker_serves_our_orchestrator() {
    if venv_python("venv-worker").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Production configuration: we sign, the SDK requires and verifies `sig`.
    let mut orchestrator = start_our_orchestrator(dir.path(), port, Some(SECRET));
    let api = Http::new(port);
    api.wait_up().await;
    let py = start_python_worker(dir.path(), port, "py-worker-1", "", Some(SECRET));
    api.wait_worker("py-worker-1").await;

    let id = api
        .create(
            "/jobs/test",
            json!({"message": "Hello World", "multiply": 3}),
        )
        .await;
    let job = api.terminal(&id).await;
    assert_eq!(job["status"], "finished", "{job}");
    assert_eq!(job["current_state"], "completed");
    assert_eq!(
        job["result"]["processed_message"],
        "Hello World Hello World Hello World"
    );
    assert_eq!(job["result"]["served_by"], "python");
    assert_eq!(job["task_worker_id"], "py-worker-1");

    // A Python skill that raises: TRANSIENT_ERROR, retried, then the failure path.
    let id = api.create("/jobs/py-fail", json!({})).await;
    let job = api.terminal(&id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["current_state"], "failed");
    assert_eq!(job["error"]["code"], "TRANSIENT_ERROR");
    assert!(
        job["error"]["message"]
            .as_str()
            .unwrap()
            .contains("python skill failed on purpose"),
        "{job}"
    );
    assert_eq!(job["attempts"], 2);

    // Heartbeats arrive (every second) and are accepted.
    let beat = |workers: Value| {
        workers
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["worker_id"] == "py-worker-1")
            .unwrap()["last_heartbeat_at"]
            .clone()
    };
    let first = beat(api.get("/api/v1/workers").await.1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = beat(api.get("/api/v1/workers").await.1);
    assert_ne!(first, second, "no heartbeat in 3 s");

    // A restarted orchestrator (memory storage) has forgotten the worker: the SDK
    // gets "Worker not found" on its next heartbeat and registers again.
    assert!(orchestrator.stop().unwrap().success());
    let _orchestrator2 = start_our_orchestrator(dir.path(), port, Some(SECRET));
    api.wait_up().await;
    api.wait_worker("py-worker-1").await;
    let id = api
        .create("/jobs/test", json!({"message": "again", "multiply": 2}))
        .await;
    assert_eq!(
        api.terminal(&id).await["result"]["processed_message"],
        "again again"
    );
    let log = py.log_text();
    assert!(
        !log.contains("missing mandatory orchestrator signature"),
        "the SDK refused a task:\n{log}"
    );
}

#[tokio::test]
async fn the_python_sdk_worker_serves_map_child_approval_and_event_flows() {
    if venv_python("venv-worker").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Production configuration: tasks and events signed with the secret.
    let _orchestrator = start_our_orchestrator(dir.path(), port, Some(SECRET));
    let api = Http::new(port);
    api.wait_up().await;
    let _py = start_python_worker(dir.path(), port, "py-worker-flows", "", Some(SECRET));
    api.wait_worker("py-worker-flows").await;

    // A map: one SDK task per element, results in input order.
    let words: Vec<String> = (0..12).map(|i| format!("w{i}")).collect();
    let id = api.create("/jobs/py-map", json!({"words": words})).await;
    let job = api.terminal(&id).await;
    assert_eq!(job["status"], "finished", "{job}");
    let items = job["results"]["each"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 12);
    for (i, item) in items.iter().enumerate() {
        let word = format!("w{i}");
        assert_eq!(
            item["processed_message"],
            vec![word.as_str(); i + 1].join(" ")
        );
        assert_eq!(item["served_by"], "python");
    }

    // A child job (an internal blueprint) whose task an SDK worker runs.
    let id = api
        .create("/jobs/py-parent", json!({"message": "kid"}))
        .await;
    let job = api.terminal(&id).await;
    assert_eq!(job["status"], "finished", "{job}");
    assert_eq!(job["result"]["processed_message"], "kid kid");
    assert_eq!(job["result"]["served_by"], "python");

    // SDK tasks around a human's decision, made with the approval token.
    let id = api
        .create("/jobs/py-approval", json!({"message": "m"}))
        .await;
    let mut job = Value::Null;
    for _ in 0..100 {
        job = api.get(&format!("/api/v1/jobs/{id}")).await.1;
        if job["status"] == "waiting_for_human" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = job["approval_token"]
        .as_str()
        .expect("an approval token")
        .to_string();
    let resp = api
        .http
        .post(format!("{}/_public/webhooks/approval/{id}", api.base))
        .json(&json!({"decision": "approved", "token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let job = api.terminal(&id).await;
    assert_eq!(job["status"], "finished", "{job}");
    assert_eq!(job["result"]["processed_message"], "m ok");
    assert_eq!(job["result"]["served_by"], "python");

    // The SDK's send_event moves the job on before the handler returns.
    let started = std::time::Instant::now();
    let id = api.create("/jobs/py-event", json!({"score": 7})).await;
    let job = api.terminal(&id).await;
    assert_eq!(
        (job["status"].as_str(), job["current_state"].as_str()),
        (Some("finished"), Some("high")),
        "{job}"
    );
    assert_eq!(job["results"]["start"], json!({"score": 7}));
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "ended after {:?}: with the handler (8 s), not on its event",
        started.elapsed()
    );
}

/// A schedules file as avtomatika's documentation writes one: every form.
const AVTOMATIKA_SCHEDULES: &str = r#"
[every_second]
blueprint = "test_flow"
interval_seconds = 1
input_data = { message = "scheduled", multiply = 1 }

[daily_backup]
blueprint = "test_flow"
daily_at = "03:00"
input_data = { message = "backup" }

[weekly_sync]
blueprint = "test_flow"
weekly_days = ["mon", "wed"]
time = "09:30"
input_data = { message = "sync" }

[monthly_report]
blueprint = "test_flow"
monthly_dates = [1, 15]
time = "12:00"
dispatch_timeout = 60
result_timeout = 120
metadata = { team = "ops" }
input_data = { message = "report" }
"#;

/// What `script` prints, run by `python` with `file` as its argument
/// (it must succeed).
fn python_prints(python: &Path, script: &str, file: &Path) -> String {
    let out = Command::new(python)
        .args(["-c", script])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn a_schedules_file_written_for_avtomatika_runs_as_it_is() {
    let Some(python) = venv_python("venv-orchestrator") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("schedules.toml");
    std::fs::write(&file, AVTOMATIKA_SCHEDULES).unwrap();
    // avtomatika's own loader reads it: it is a file for avtomatika.
    let printed = python_prints(
        &python,
        "import sys; from avtomatika.scheduler_config_loader import load_schedules_from_file as l; print(sorted(s.name for s in l(sys.argv[1])))",
        &file,
    );
    assert_eq!(
        printed,
        "['daily_backup', 'every_second', 'monthly_report', 'weekly_sync']"
    );
    // Ours runs it: every form loads, the every-second one makes jobs.
    let port = free_port();
    let path = file.clone();
    let _orchestrator = start_our_orchestrator_with(dir.path(), port, None, move |cmd| {
        cmd.env("SCHEDULES_CONFIG_PATH", &path);
    });
    let api = Http::new(port);
    api.wait_up().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, list) = api.get("/api/v1/schedules").await;
    assert_eq!(status, 200, "{list}");
    let names: Vec<&str> = list["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "daily_backup",
            "every_second",
            "monthly_report",
            "weekly_sync"
        ]
    );
    let weekly = &list["schedules"][3];
    assert_eq!(weekly["when"], "cron `30 9 * * 1,3` (UTC)", "{weekly}");
    let (_, jobs) = api.get("/api/v1/jobs?blueprint=test_flow").await;
    let jobs = jobs["jobs"].as_array().unwrap();
    assert!(jobs.len() >= 2, "{jobs:?}");
    assert_eq!(jobs[0]["initial_data"]["message"], "scheduled");
}

#[tokio::test]
async fn a_mixed_fleet_routes_tasks_by_declared_skills() {
    if venv_python("venv-worker").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // The defaults: no orchestrator secret anywhere.
    let _orchestrator = start_our_orchestrator(dir.path(), port, None);
    let api = Http::new(port);
    api.wait_up().await;
    let _wasm = start_our_worker(dir.path(), port, "wasm-worker-1", false, None);
    let _py = start_python_worker(dir.path(), port, "py-worker-1", "py_", None);
    api.wait_worker("wasm-worker-1").await;
    api.wait_worker("py-worker-1").await;

    // echo_task only on the wasm worker, py_echo_task only on the Python one.
    for n in 1..=3u64 {
        let id = api
            .create("/jobs/test", json!({"message": "w", "multiply": n}))
            .await;
        let job = api.terminal(&id).await;
        assert_eq!(job["task_worker_id"], "wasm-worker-1", "{job}");
        assert!(job["result"].get("served_by").is_none());
    }
    // One job through both: wasm first, then Python with the wasm result.
    let id = api.create("/jobs/mixed", json!({"message": "hi"})).await;
    let job = api.terminal(&id).await;
    assert_eq!(job["status"], "finished", "{job}");
    assert_eq!(job["results"]["start"]["processed_message"], "hi hi");
    assert_eq!(job["result"]["processed_message"], "hi hi hi hi");
    assert_eq!(job["result"]["served_by"], "python");
    let (_, history) = api.get(&format!("/api/v1/jobs/{id}/history")).await;
    let text = history.to_string();
    assert!(
        text.contains("taken by worker wasm-worker-1")
            && text.contains("taken by worker py-worker-1"),
        "{text}"
    );
}

/// The control for the signed run above: the SDK given the secret really
/// checks, so an unsigned task from an orchestrator without it is dropped.
#[tokio::test]
async fn the_python_sdk_with_the_secret_refuses_unsigned_tasks() {
    if venv_python("venv-worker").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _orchestrator = start_our_orchestrator(dir.path(), port, None);
    let api = Http::new(port);
    api.wait_up().await;
    let py = start_python_worker(dir.path(), port, "py-worker-1", "", Some(SECRET));
    api.wait_worker("py-worker-1").await;
    api.create("/jobs/test", json!({"message": "unsigned", "multiply": 1}))
        .await;
    wait_until(
        "the SDK to refuse the task",
        Duration::from_secs(30),
        || async {
            py.log_text()
                .contains("missing mandatory orchestrator signature")
        },
    )
    .await;
}

/// avtomatika-worker SDK workers declare their hardware with the SDK's own
/// settings (`GPU_MODEL`, `GPU_VRAM_GB`); a task requiring a GPU goes only
/// to the one that declares it, plain tasks to either.
#[tokio::test]
async fn sdk_workers_declaring_resources_receive_only_matching_tasks() {
    if venv_python("venv-worker").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _orchestrator = start_our_orchestrator(dir.path(), port, Some(SECRET));
    let api = Http::new(port);
    api.wait_up().await;
    let _cpu = start_python_worker(dir.path(), port, "py-cpu", "", Some(SECRET));
    let _gpu = start_python_worker_env(
        dir.path(),
        port,
        "py-gpu",
        "",
        Some(SECRET),
        &[("GPU_MODEL", "NVIDIA RTX 4090"), ("GPU_VRAM_GB", "24")],
    );
    api.wait_worker("py-cpu").await;
    api.wait_worker("py-gpu").await;
    let mut gpu_jobs = Vec::new();
    let mut plain_jobs = Vec::new();
    for n in 0..8 {
        gpu_jobs.push(
            api.create("/jobs/py-gpu", json!({"message": format!("g{n}")}))
                .await,
        );
        plain_jobs.push(
            api.create(
                "/jobs/test",
                json!({"message": format!("p{n}"), "multiply": 1}),
            )
            .await,
        );
    }
    for id in &gpu_jobs {
        let job = api.terminal(id).await;
        assert_eq!(job["status"], "finished", "{job}");
        assert_eq!(job["task_worker_id"], "py-gpu", "{job}");
        assert_eq!(job["result"]["served_by"], "python");
    }
    for id in &plain_jobs {
        let job = api.terminal(id).await;
        assert_eq!(job["status"], "finished", "{job}");
    }
}

/// A `clients.toml` as avtomatika's configuration guide writes it.
const AVTOMATIKA_CLIENTS: &str = r#"
# Premium client
[client_premium_user]
token = "sec_vip_token_123"
plan = "premium"
monthly_attempts = 100000
# Custom parameters
languages = ["en", "de", "fr"]
priority_support = true

# Free client
[client_free_user]
token = "sec_free_token_456"
plan = "free"
monthly_attempts = 3
languages = ["en"]
"#;

/// Echoes what the job's client is: its name, plan and languages.
const CLIENT_FLOW: &str = r#"
name = "client_flow"
api_endpoint = "/jobs/client"
api_version = "v1"
[states.start]
start = true
dispatch.task = "echo_task"
dispatch.params.message = "client.name ~ '/' ~ client.plan ~ '/' ~ (client.params.languages | join(','))"
dispatch.params.multiply = 1
dispatch.on = { success = "done" }
[states.done]
end = "finished"
"#;

#[tokio::test]
async fn a_clients_file_written_for_avtomatika_gives_plans_params_and_quotas() {
    let Some(python) = venv_python("venv-orchestrator") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clients.toml");
    std::fs::write(&file, AVTOMATIKA_CLIENTS).unwrap();
    // avtomatika's own loader reads it into its storage.
    let printed = python_prints(
        &python,
        "import asyncio, sys\n\
         from avtomatika.client_config_loader import load_client_configs_to_redis as load\n\
         from avtomatika.storage.memory import MemoryStorage\n\
         s = MemoryStorage()\n\
         asyncio.run(load(s, sys.argv[1]))\n\
         c = asyncio.run(s.get_client_config('sec_free_token_456'))\n\
         print(c['plan'], c['languages'], s._quotas['sec_free_token_456'])",
        &file,
    );
    assert_eq!(printed, "free ['en'] 3");
    // Ours: the tokens sign in, blueprints read the plan and parameters,
    // and the free client's three requests a month are counted.
    let blueprints = dir.path().join("blueprints");
    std::fs::create_dir_all(&blueprints).unwrap();
    std::fs::write(blueprints.join("client_flow.toml"), CLIENT_FLOW).unwrap();
    let port = free_port();
    let path = file.clone();
    let _orchestrator = start_our_orchestrator_with(dir.path(), port, None, move |cmd| {
        cmd.env("CLIENTS_CONFIG_PATH", &path);
    });
    let api = Http::new(port);
    api.wait_up().await;
    let _worker = start_our_worker(dir.path(), port, "wasm-worker-1", false, None);
    api.wait_worker("wasm-worker-1").await;
    let http = reqwest::Client::new();
    let create = |token: &'static str| {
        let (http, base) = (http.clone(), api.base.clone());
        async move {
            let resp = http
                .post(format!("{base}/api/v1/jobs/client"))
                .header("X-Client-Token", token)
                .json(&json!({"initial_data": {}}))
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let (status, accepted) = create("sec_vip_token_123").await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["job_id"].as_str().unwrap().to_string();
    let job = loop {
        let resp = http
            .get(format!("{}/api/v1/jobs/{id}?wait=10", api.base))
            .header("X-Client-Token", "sec_vip_token_123")
            .send()
            .await
            .unwrap();
        let job: Value = resp.json().await.unwrap();
        if job["status"] != "waiting_for_worker" && job["status"] != "running" {
            break job;
        }
    };
    assert_eq!(job["status"], "finished", "{job}");
    assert_eq!(
        job["result"]["original_message"], "client_premium_user/premium/en,de,fr",
        "{job}"
    );
    for _ in 0..3 {
        assert_ne!(create("sec_free_token_456").await.0, 429);
    }
    let (status, refused) = create("sec_free_token_456").await;
    assert_eq!(status, 429, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("client client_free_user (plan free) may make 3 requests a month"),
        "{refused}"
    );
}

/// The SDK's S3 files on our orchestrator, both ways, in production mode:
/// a client uploads a file of the job to our orchestrator; the SDK worker
/// gets its `s3://` URI as a param, downloads it from the same S3 service,
/// hashes it and writes a file that the SDK uploads, naming it in
/// `data_metadata`; the next task gets that file's URI (and its
/// `params_metadata`), and the client downloads the worker's file from us.
#[tokio::test]
async fn the_python_sdk_reads_and_writes_the_s3_files_of_our_jobs() {
    if venv_python("venv-worker").is_none() {
        return;
    }
    use sha2::Digest;
    let s3 = crate::support::s3::S3Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _orchestrator = start_our_orchestrator_with(dir.path(), port, Some(SECRET), |cmd| {
        cmd.envs(s3.env());
    });
    let api = Http::new(port);
    api.wait_up().await;
    let mut env: Vec<(&str, String)> = s3.env();
    env.push((
        "TASK_FILES_DIR",
        dir.path().join("py-files").display().to_string(),
    ));
    env.push((
        "WORKER_BLOB_CACHE_DIR",
        dir.path().join("py-cache").display().to_string(),
    ));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _py = start_python_worker_env(dir.path(), port, "py-files-1", "", Some(SECRET), &env);
    api.wait_worker("py-files-1").await;

    let id = api.create("/jobs/py-files", json!({})).await;
    let data: Vec<u8> = (0..5u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let sha = hex::encode(sha2::Sha256::digest(&data));
    let resp = api
        .http
        .put(format!(
            "{}/api/v1/jobs/{id}/files/content/input.bin",
            api.base
        ))
        .header("X-Client-Token", CLIENT)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let uri = resp.json::<Value>().await.unwrap()["s3_uri"]
        .as_str()
        .unwrap()
        .to_string();
    let resp = api
        .http
        .post(format!("{}/api/v1/jobs/{id}/signal/go", api.base))
        .header("X-Client-Token", CLIENT)
        .json(&json!({ "input": uri }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    let job = api.terminal(&id).await;
    assert_eq!(job["status"], "finished", "{job}");
    assert_eq!(
        job["results"]["hash"]["sha256"], sha,
        "the SDK read the file we stored"
    );
    assert_eq!(job["results"]["hash"]["size"], 5 << 20);
    let out = format!("s3://{}/{id}/digest.txt", crate::support::s3::BUCKET);
    assert_eq!(
        job["results"]["hash"]["digest_file"], out,
        "the SDK uploaded its output"
    );
    assert_eq!(job["data_metadata"]["digest_file"]["uri"], out, "{job}");
    assert_eq!(job["data_metadata"]["digest_file"]["size"], 64);
    // An empty file's size is 0, which rxon's model omits: the next task's
    // params_metadata names it, and the SDK still accepts the task's `sig`.
    assert_eq!(
        job["data_metadata"]["empty_file"]["uri"],
        format!("s3://{}/{id}/empty.txt", crate::support::s3::BUCKET)
    );
    assert_eq!(
        job["result"]["text"], sha,
        "the next task read the worker's file"
    );

    // The worker's file, from our download route (a redirect to the service).
    let got = api
        .http
        .get(format!(
            "{}/api/v1/jobs/{id}/files/download/digest.txt",
            api.base
        ))
        .header("X-Client-Token", CLIENT)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status().as_u16(), 200);
    assert_eq!(got.text().await.unwrap(), sha);
    assert_eq!(
        std::fs::read_to_string(s3.file(&format!("{id}/digest.txt"))).unwrap(),
        sha
    );
}
