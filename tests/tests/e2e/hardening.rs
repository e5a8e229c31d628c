//! Hardening with real processes: hostile plugins, oversize answers, bad
//! durations, crashes and restarts. Each test shows the worker still
//! heartbeating and serving echo jobs afterwards, every job ending with a
//! named code, and no `panicked` in any log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::{Value, json};

fn add_chaos_flows(stack: &Stack, skills: &[&str]) {
    for skill in skills {
        stack.add_blueprint(&format!("one_{skill}"), &one_task_flow(skill));
    }
}

/// The worker heartbeats, an echo job finishes, and nothing panicked.
async fn assert_still_serving(stack: &Stack, worker_id: &str) {
    stack.wait_heartbeat(worker_id).await;
    let id = stack.create("/jobs/test", echo_body("still here", 2)).await;
    let job = stack.finished(&id).await;
    assert_eq!(job["status"], "finished", "{job}");
    assert_eq!(job["result"]["processed_message"], "still here still here");
    stack.assert_no_panic();
}

async fn ended_with(stack: &Stack, id: &str, status: &str, code: &str) -> Value {
    let job = stack.finished(id).await;
    assert_eq!(job["status"], status, "{job}");
    assert_eq!(job["error"]["code"], code, "{job}");
    job
}

#[tokio::test]
async fn oversize_answers_fail_with_named_codes_and_the_worker_serves_on() {
    let mut stack = Stack::new();
    stack.add_plugin(plugin_fixtures::CHAOS_TASK);
    add_chaos_flows(
        &stack,
        &[
            "big_result",
            "big_error",
            "big_status",
            "print_flood",
            "leak_handles",
        ],
    );
    stack.start().await;

    // 20 MiB answers (within the 128 MiB memory cap): refused while copying.
    for skill in ["big_result", "big_error"] {
        let id = stack
            .create(&format!("/jobs/one/{skill}"), json!({"bytes": 20 << 20}))
            .await;
        let job = ended_with(&stack, &id, "quarantined", "RESOURCE_EXHAUSTED_ERROR").await;
        let message = job["error"]["message"].as_str().unwrap();
        assert!(message.contains("the limit is 1000000 bytes"), "{message}");
    }
    let id = stack
        .create("/jobs/one/big_status", json!({"bytes": 200_000}))
        .await;
    let job = ended_with(&stack, &id, "quarantined", "CONTRACT_VIOLATION_ERROR").await;
    assert!(
        job["error"]["message"].as_str().unwrap().len() < 400,
        "{job}"
    );

    let id = stack.create("/jobs/one/leak_handles", json!({})).await;
    let job = ended_with(&stack, &id, "quarantined", "RESOURCE_EXHAUSTED_ERROR").await;
    let message = job["error"]["message"].as_str().unwrap();
    assert!(message.contains("handle limit exceeded"), "{message}");

    // Printing far beyond the capture buffer: the task goes on.
    let id = stack
        .create("/jobs/one/print_flood", json!({"bytes": 4 << 20}))
        .await;
    let job = stack.finished(&id).await;
    assert_eq!(job["status"], "finished", "{job}");
    let (_, worker_log) = stack.logs();
    assert!(worker_log.contains("beyond the 262144 bytes kept per task; they were dropped"));

    // A result just under the limit is delivered, within a bounded RSS.
    let id = stack
        .create("/jobs/one/big_result", json!({"bytes": 990_000}))
        .await;
    let job = stack.finished(&id).await;
    assert_eq!(job["status"], "finished", "{job}");
    assert_eq!(job["result"]["blob"].as_str().unwrap().len(), 990_000);
    let peak = stack.worker.as_ref().unwrap().peak_rss_kib().unwrap();
    eprintln!(
        "worker peak RSS (VmHWM) after the oversize and near-limit answers: {} MiB",
        peak / 1024
    );
    // The bound documented in docs/benchmarks.md (debug build).
    assert!(peak < 300 * 1024, "worker peak RSS {peak} KiB");

    // Plugin text in the host's logs is cut.
    let (orchestrator_log, worker_log) = stack.logs();
    for (name, log) in [("orchestrator", &orchestrator_log), ("worker", &worker_log)] {
        let longest = log.lines().map(str::len).max().unwrap_or(0);
        assert!(
            longest < 8 * 1024,
            "{name} logged a line of {longest} bytes"
        );
    }
    assert_still_serving(&stack, WORKER_ID).await;
}

#[tokio::test]
async fn a_result_the_orchestrator_refuses_as_too_large_fails_the_task_at_once() {
    let mut stack = Stack::new();
    stack.add_plugin(plugin_fixtures::CHAOS_TASK);
    add_chaos_flows(&stack, &["big_result"]);
    let config = stack.dir.path().join("small-bodies.toml");
    std::fs::write(&config, "max_body_bytes = 200000\n").unwrap();
    stack.start_orchestrator_with(|cmd| {
        cmd.arg("--config").arg(&config);
    });
    stack.wait_ready().await;
    stack.start_worker();
    stack.wait_worker().await;

    let id = stack
        .create("/jobs/one/big_result", json!({"bytes": 500_000}))
        .await;
    let job = ended_with(&stack, &id, "quarantined", "RESOURCE_EXHAUSTED_ERROR").await;
    let message = job["error"]["message"].as_str().unwrap();
    assert!(message.contains("413"), "{message}");
    let (_, worker_log) = stack.logs();
    assert!(
        !worker_log.contains("cannot reach the orchestrator"),
        "{worker_log}"
    );
    assert_still_serving(&stack, WORKER_ID).await;
}

#[tokio::test]
async fn a_registration_refused_as_too_large_is_reported_and_retried_when_the_plugins_change() {
    let mut stack = Stack::new();
    // echo + failing + chaos is about 3.3 KB; echo + failing about 1.4 KB.
    stack.add_plugin(plugin_fixtures::CHAOS_TASK);
    let config = stack.dir.path().join("tiny-bodies.toml");
    std::fs::write(&config, "max_body_bytes = 2500\n").unwrap();
    stack.start_orchestrator_with(|cmd| {
        cmd.arg("--config").arg(&config);
    });
    stack.wait_ready().await;
    stack.start_worker();
    wait_until(
        "the refusal to be logged",
        Duration::from_secs(30),
        || async { stack.logs().1.contains("registration refused") },
    )
    .await;
    let (_, log) = stack.logs();
    assert!(log.contains("413"), "{log}");
    assert!(
        log.contains("not retrying until the plugins change"),
        "{log}"
    );
    // Not retried blindly.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stack.logs().1.matches("registration refused").count(), 1);

    // Removing the plugin that made it large is noticed, and it registers.
    std::fs::remove_file(stack.dir.path().join("plugins/chaos_task.wasm")).unwrap();
    stack.wait_worker().await;
    assert_still_serving(&stack, WORKER_ID).await;
}

#[tokio::test]
async fn hostile_deploys_do_not_wedge_the_worker_nor_take_over_skills_nor_quarantine_tasks() {
    let mut stack = Stack::new();
    // A plugin with a 1.7 MB self-description, present from the start.
    stack.add_plugin(plugin_fixtures::BLOATED_TASK);
    stack.start().await;
    let (_, log) = stack.logs();
    assert!(log.contains("bloated_task.wasm"), "{log}");
    assert!(log.contains("the limit is 262144 bytes"), "{log}");
    assert_still_serving(&stack, WORKER_ID).await;

    // Another copy dropped in while running: skipped the same way.
    let plugins = stack.dir.path().join("plugins");
    std::fs::copy(
        plugin_fixtures::BLOATED_TASK,
        plugins.join("bloated_again.wasm"),
    )
    .unwrap();
    wait_until("the reload", Duration::from_secs(30), || async {
        stack.logs().1.contains("bloated_again.wasm")
    })
    .await;
    assert_still_serving(&stack, WORKER_ID).await;

    // An impostor declaring echo_task (its name sorts first) is refused.
    std::fs::copy(
        plugin_fixtures::IMPOSTOR_TASK,
        plugins.join("aaa_impostor.wasm"),
    )
    .unwrap();
    wait_until(
        "the impostor to be refused",
        Duration::from_secs(30),
        || async { stack.logs().1.contains("refusing plugin") },
    )
    .await;
    let (_, log) = stack.logs();
    let line = log.lines().find(|l| l.contains("refusing plugin")).unwrap();
    assert!(
        line.contains("aaa_impostor.wasm") && line.contains("echo_task.wasm"),
        "{line}"
    );
    assert_still_serving(&stack, WORKER_ID).await;

    // Removing a plugin while its tasks keep coming quarantines none of them.
    stack.add_plugin(plugin_fixtures::CHAOS_TASK);
    wait_until(
        "custom_status to be offered",
        Duration::from_secs(30),
        || async {
            stack.worker_view(WORKER_ID).await.is_some_and(|w| {
                w["supported_skills"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("custom_status"))
            })
        },
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(stack.create("/jobs/hot", json!({"doc": i})).await);
        if i == 10 {
            std::fs::remove_file(plugins.join("chaos_task.wasm")).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_until(
        "custom_status to be withdrawn",
        Duration::from_secs(30),
        || async {
            stack.worker_view(WORKER_ID).await.is_some_and(|w| {
                !w["supported_skills"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("custom_status"))
            })
        },
    )
    .await;
    stack.add_plugin(plugin_fixtures::CHAOS_TASK);
    for id in &ids {
        let job = stack.finished(id).await;
        assert_eq!(job["status"], "finished", "{job}");
    }
    assert_still_serving(&stack, WORKER_ID).await;
}

#[tokio::test]
async fn out_of_range_durations_are_refused_at_the_edge_and_nothing_panics() {
    let mut stack = Stack::new();
    stack.start().await;
    for field in ["result_timeout", "dispatch_timeout"] {
        for bad in [json!(1e20), json!(-1), json!("x"), json!(0)] {
            let (status, body) = stack
                .try_create("/jobs/test", json!({"initial_data": {}, field: bad}))
                .await;
            assert_eq!(status, 400, "{field}={bad}: {body}");
            assert!(body["error"].as_str().unwrap().contains(field), "{body}");
        }
    }
    // NaN is not JSON: a 400 too.
    let resp = stack
        .http
        .post(format!("{}/api/v1/jobs/test", stack.base))
        .header("X-Client-Token", CLIENT_TOKEN)
        .header("Content-Type", "application/json")
        .body(r#"{"initial_data": {}, "result_timeout": NaN}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);

    let id = stack.create("/jobs/test", echo_body("w", 1)).await;
    for bad in ["NaN", "-1", "x"] {
        let (status, body) = stack.get(&format!("/api/v1/jobs/{id}?wait={bad}")).await;
        assert_eq!(status, 400, "wait={bad}: {body}");
        assert!(body["error"].as_str().unwrap().contains("'wait'"), "{body}");
    }
    let (status, _) = stack.get(&format!("/api/v1/jobs/{id}?wait=1e20")).await;
    assert_eq!(status, 200, "a huge wait is capped");
    for bad in ["NaN", "-1", "x", "1e20"] {
        let resp = stack
            .http
            .get(format!(
                "{}/_worker/workers/{WORKER_ID}/tasks/next?timeout={bad}",
                stack.base
            ))
            .header("X-Worker-Token", WORKER_TOKEN)
            .header("X-Worker-Id", WORKER_ID)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        if bad == "1e20" {
            assert!(
                status == 200 || status == 204,
                "a huge poll timeout is capped: {status}"
            );
        } else {
            assert_eq!(status, 400, "timeout={bad}");
        }
    }
    assert_still_serving(&stack, WORKER_ID).await;

    // Blueprints with such values do not load; the error names the field.
    for (value, field) in [
        ("1e20", "result_timeout"),
        ("-1", "dispatch_timeout"),
        ("nan", "result_timeout"),
        ("\"x\"", "result_timeout"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("bad.toml"),
            format!(
                "name = \"bad\"\napi_endpoint = \"/jobs/bad\"\n[states.start]\nstart = true\ndispatch.task = \"echo_task\"\ndispatch.{field} = {value}\ndispatch.on = {{ success = \"done\" }}\n[states.done]\nend = \"finished\"\n"
            ),
        )
        .unwrap();
        let out = std::process::Command::new(binary("orchestrator"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--storage",
                "memory",
                "--blueprints-dir",
            ])
            .arg(dir.path())
            .env("CLIENT_TOKEN", "c")
            .env("GLOBAL_WORKER_TOKEN", "w")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{field} = {value} must not load");
        assert!(
            stderr.contains(field) || stderr.contains("line 6"),
            "{field} = {value}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test]
async fn a_stored_job_with_out_of_range_values_fails_once_and_the_rest_runs() {
    let mut stack = Stack::new();
    stack.start_orchestrator();
    stack.wait_ready().await;
    // Nobody serves ghost_flow: the job waits, stored, with a timeout.
    let (status, body) = stack
        .try_create(
            "/jobs/ghost",
            json!({"initial_data": {}, "result_timeout": 5}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let ghost = body["job_id"].as_str().unwrap().to_string();
    stack.orchestrator.as_mut().unwrap().stop();
    // An older version (or a hand edit) left an out-of-range value behind.
    let db = stack.dir.path().join("orchestrator.db");
    let edit = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3,json,sys; c=sqlite3.connect(sys.argv[1]); \
             b=json.loads(c.execute('select body from jobs where id=?',(sys.argv[2],)).fetchone()[0]); \
             b['result_timeout']=1e20; b['dispatch_timeout']=1e20; \
             c.execute('update jobs set body=? where id=?',(json.dumps(b),sys.argv[2])); c.commit()",
        )
        .arg(&db)
        .arg(&ghost)
        .status()
        .unwrap();
    assert!(edit.success());
    stack.start_orchestrator();
    stack.wait_ready().await;
    stack.start_worker();
    stack.wait_worker().await;
    let job = ended_with(&stack, &ghost, "failed", "INVALID_JOB").await;
    assert!(
        job["error"]["message"]
            .as_str()
            .unwrap()
            .contains("_timeout' must be a positive number of seconds"),
        "{job}"
    );
    assert_still_serving(&stack, WORKER_ID).await;
}

async fn history(stack: &Stack, id: &str) -> String {
    let (_, h) = stack.get(&format!("/api/v1/jobs/{id}/history")).await;
    h.to_string()
}

#[tokio::test]
async fn a_worker_restarted_with_the_same_id_gets_its_tasks_back_at_once() {
    let mut stack = Stack::new();
    stack.add_plugin(plugin_fixtures::CHAOS_TASK);
    add_chaos_flows(&stack, &["sleep"]);
    stack.start().await;
    let ids = stack
        .five_held_tasks(WORKER_ID, 6000, Duration::from_secs(30))
        .await;
    stack.worker.as_mut().unwrap().kill9();
    // What systemd or a pod restart does: the same WORKER_ID again.
    stack.worker = Some(stack.spawn_worker(WORKER_ID, "worker-2.log", |_| {}));
    for id in &ids {
        let job = stack.finished(id).await;
        assert_eq!(job["status"], "finished", "{job}");
        let h = history(&stack, id).await;
        assert!(h.contains("its worker restarted"), "{h}");
    }
    assert_still_serving(&stack, WORKER_ID).await;
}

#[tokio::test]
async fn the_tasks_of_a_killed_polling_worker_run_elsewhere_within_its_heartbeat_bound() {
    let mut stack = Stack::new();
    stack.add_plugin(plugin_fixtures::CHAOS_TASK);
    add_chaos_flows(&stack, &["sleep"]);
    stack.start_orchestrator();
    stack.wait_ready().await;
    // HTTP long-poll only: no task channel whose closing would tell.
    stack.worker = Some(stack.spawn_worker(WORKER_ID, "worker.log", |cmd| {
        cmd.arg("--no-task-channel");
    }));
    stack.wait_worker().await;
    let ids = stack
        .five_held_tasks(WORKER_ID, 6000, Duration::from_secs(30))
        .await;
    let mut other = stack.spawn_worker("other-worker", "other.log", |_| {});
    stack.worker.as_mut().unwrap().kill9();
    let killed = Instant::now();
    // 1 s heartbeats: gone after 2 × 1 s + 5 s; the tasks then run on the other.
    wait_until("the tasks to move", Duration::from_secs(20), || async {
        let mut moved = 0;
        for id in &ids {
            if history(&stack, id)
                .await
                .contains("its worker stopped heartbeating")
            {
                moved += 1;
            }
        }
        moved == ids.len()
    })
    .await;
    eprintln!("tasks requeued {:?} after the kill", killed.elapsed());
    for id in &ids {
        let job = stack.finished(id).await;
        assert_eq!(job["status"], "finished", "{job}");
        assert_eq!(job["task_worker_id"], "other-worker", "{job}");
    }
    assert!(!other.log_text().contains("panicked"));
    other.stop();
}

#[tokio::test]
async fn webhooks_pending_when_the_orchestrator_is_killed_are_delivered_after_restart() {
    let mut stack = Stack::new();
    // Loopback is refused by the webhook egress rule unless allowed.
    let config = stack.dir.path().join("hooks.toml");
    std::fs::write(&config, "webhook_allowed_hosts = [\"127.0.0.1\"]\n").unwrap();
    let with_config = |cmd: &mut std::process::Command| {
        cmd.arg("--config").arg(&config);
    };
    stack.start_orchestrator_with(with_config);
    stack.wait_ready().await;
    stack.start_worker();
    stack.wait_worker().await;
    let hook_port = free_port();
    let url = format!("http://127.0.0.1:{hook_port}/hook");
    let mut ids = Vec::new();
    for i in 0..10 {
        let (status, body) = stack
            .try_create(
                "/jobs/test",
                json!({"initial_data": {"message": format!("m{i}"), "multiply": 1}, "webhook_url": url}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["job_id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        assert_eq!(stack.finished(id).await["status"], "finished");
    }
    wait_until(
        "first attempts to fail",
        Duration::from_secs(10),
        || async { stack.logs().0.matches("(attempt 1 of 5)").count() >= ids.len() },
    )
    .await;
    stack.orchestrator.as_mut().unwrap().kill9();
    let got = webhook_receiver(hook_port).await;
    stack.start_orchestrator_with(with_config);
    stack.wait_ready().await;
    wait_until(
        "all webhooks delivered",
        Duration::from_secs(30),
        || async {
            let got = got.lock().unwrap();
            ids.iter()
                .all(|id| got.iter().any(|v| v["job_id"] == id.as_str()))
        },
    )
    .await;
    assert!(
        got.lock()
            .unwrap()
            .iter()
            .all(|v| v["event"] == "job_finished")
    );
    stack.wait_worker().await;
    assert_still_serving(&stack, WORKER_ID).await;
}

#[tokio::test]
async fn shutdown_answers_waiting_clients_at_once() {
    let mut stack = Stack::new();
    stack.start().await;
    let ghost = stack.create("/jobs/ghost", json!({})).await;
    let http = stack.http.clone();
    let url = format!("{}/api/v1/jobs/{ghost}?wait=60", stack.base);
    let waiting = tokio::spawn(async move {
        let resp = http
            .get(url)
            .header("X-Client-Token", CLIENT_TOKEN)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let exit = stack.orchestrator.as_mut().unwrap().stop().unwrap();
    let took = started.elapsed();
    assert!(exit.success(), "{exit:?}");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    let (status, job) = waiting.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(job["status"], "waiting_for_worker", "{job}");
}

#[tokio::test]
async fn with_an_orchestrator_secret_tasks_are_signed_and_a_mismatch_is_refused() {
    let mut stack = Stack::new();
    stack.start_orchestrator_with(|cmd| {
        cmd.env("ORCHESTRATOR_SECRET_KEY", "the-secret");
    });
    stack.wait_ready().await;
    // The same secret: tasks verify and run.
    stack.worker = Some(stack.spawn_worker(WORKER_ID, "worker.log", |cmd| {
        cmd.env("ORCHESTRATOR_SECRET_KEY", "the-secret");
    }));
    stack.wait_worker().await;
    assert_still_serving(&stack, WORKER_ID).await;
    stack.worker.as_mut().unwrap().stop();

    // Another secret: the task is refused and reported as SECURITY_ERROR.
    stack.worker = Some(stack.spawn_worker(WORKER_ID, "worker-wrong.log", |cmd| {
        cmd.env("ORCHESTRATOR_SECRET_KEY", "not-the-secret");
    }));
    stack.wait_worker().await;
    let id = stack.create("/jobs/test", echo_body("forged?", 1)).await;
    let job = ended_with(&stack, &id, "quarantined", "SECURITY_ERROR").await;
    let message = job["error"]["message"].as_str().unwrap();
    assert!(message.contains("does not match"), "{message}");
    assert!(stack.logs().1.contains("refusing task"));
    stack.worker.as_mut().unwrap().stop();

    // An orchestrator without the secret sends unsigned tasks: refused too.
    stack.orchestrator.as_mut().unwrap().stop();
    stack.start_orchestrator();
    stack.wait_ready().await;
    stack.worker = Some(stack.spawn_worker(WORKER_ID, "worker-unsigned.log", |cmd| {
        cmd.env("ORCHESTRATOR_SECRET_KEY", "the-secret");
    }));
    stack.wait_worker().await;
    let id = stack.create("/jobs/test", echo_body("unsigned", 1)).await;
    let job = ended_with(&stack, &id, "quarantined", "SECURITY_ERROR").await;
    let message = job["error"]["message"].as_str().unwrap();
    assert!(message.contains("no orchestrator signature"), "{message}");
    stack.assert_no_panic();
}
