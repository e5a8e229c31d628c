//! Deploys through the orchestrator: plugins uploaded once and pulled by
//! every worker host (real processes, real uploads), rollback, refused
//! uploads, the compiled cache across a worker restart, and blueprint
//! versions deployed through the API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::{Value, json};

/// A stack whose worker hosts start with an empty plugins directory.
fn empty_stack() -> Stack {
    let stack = Stack::new();
    for entry in std::fs::read_dir(stack.dir.path().join("plugins")).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    stack
}

async fn wait_registered(stack: &Stack, ids: &[&str]) {
    wait_until(
        "the workers to register",
        Duration::from_secs(60),
        || async {
            let (_, workers) = stack.get("/api/v1/workers").await;
            ids.iter().all(|id| {
                workers
                    .as_array()
                    .is_some_and(|a| a.iter().any(|w| w["worker_id"] == *id))
            })
        },
    )
    .await;
}

/// Whether every worker in `ids` reports `plugin` version `version` running.
async fn all_run(stack: &Stack, ids: &[&str], plugin: &str, version: u64) -> bool {
    let (_, listing) = stack.get("/api/v1/plugins").await;
    let Some(entry) = listing["plugins"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == plugin))
    else {
        return false;
    };
    ids.iter().all(|id| {
        entry["workers"].as_array().is_some_and(|ws| {
            ws.iter().any(|w| {
                w["worker_id"] == *id && w["version"] == version && w["state"] == "running"
            })
        })
    })
}

async fn wait_all_run(stack: &Stack, ids: &[&str], plugin: &str, version: u64) {
    wait_until(
        &format!("every worker to run {plugin} v{version}"),
        Duration::from_secs(60),
        || all_run(stack, ids, plugin, version),
    )
    .await;
}

fn serves(workers: &Value, id: &str, skill: &str) -> bool {
    workers.as_array().is_some_and(|a| {
        a.iter().any(|w| {
            w["worker_id"] == id
                && w["supported_skills"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|n| n == skill))
        })
    })
}

fn no_panics(stack: &Stack, workers: &[&Proc]) {
    let (orchestrator, _) = stack.logs();
    assert!(!orchestrator.contains("panicked"), "{orchestrator}");
    for w in workers {
        let log = w.log_text();
        assert!(!log.contains("panicked"), "{log}");
    }
}

#[tokio::test]
async fn one_upload_reaches_three_workers_with_no_plugins_within_two_seconds() {
    let mut stack = empty_stack();
    stack.start_orchestrator();
    stack.wait_ready().await;
    let ids = ["fleet-a", "fleet-b", "fleet-c"];
    let mut workers: Vec<Proc> = ids
        .iter()
        .map(|id| stack.spawn_worker(id, &format!("{id}.log"), |_| {}))
        .collect();
    wait_registered(&stack, &ids).await;
    let (_, before) = stack.get("/api/v1/workers").await;
    assert!(ids.iter().all(|id| !serves(&before, id, "echo_task")));

    let echo = std::fs::read(plugin_fixtures::ECHO_TASK).unwrap();
    let (status, answer) = upload(&stack, DEPLOY_TOKEN, "echo_task", &echo).await;
    assert_eq!(status, 201, "{answer}");
    let uploaded = Instant::now();
    assert_eq!(answer["version"], 1);
    assert_eq!(answer["sha256"], rxon::deploy::sha256_hex(&echo));
    loop {
        let (_, now) = stack.get("/api/v1/workers").await;
        if ids.iter().all(|id| serves(&now, id, "echo_task")) {
            eprintln!(
                "all three workers serve echo_task {:?} after the upload",
                uploaded.elapsed()
            );
            break;
        }
        assert!(
            uploaded.elapsed() < Duration::from_secs(2),
            "not every worker serves echo_task 2 s after the upload: {now}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And they run it: jobs finish with echo's answer.
    let mut jobs = Vec::new();
    for i in 0..12 {
        jobs.push(
            stack
                .create("/jobs/test", echo_body(&format!("m{i}"), 2))
                .await,
        );
    }
    for (i, id) in jobs.iter().enumerate() {
        let job = stack.finished(id).await;
        assert_eq!(job["status"], "finished", "{job}");
        assert_eq!(job["result"]["processed_message"], format!("m{i} m{i}"));
    }
    let (_, listing) = stack.get("/api/v1/plugins").await;
    let entry = &listing["plugins"][0];
    assert_eq!(entry["name"], "echo_task");
    assert_eq!(entry["current_version"], 1);
    assert_eq!(entry["skills"][0]["name"], "echo_task", "{listing}");
    assert_eq!(entry["workers"].as_array().unwrap().len(), 3, "{listing}");
    for w in &mut workers {
        // The three share a cache directory: a worker may find the
        // component another one downloaded.
        let log = w.log_text();
        assert!(
            log.contains("downloaded") || log.contains("component found in"),
            "{log}"
        );
        w.stop();
    }
    no_panics(&stack, &workers.iter().collect::<Vec<_>>());
}

/// The result tells the versions apart: echo (v1) answers
/// `processed_message`, the v2 upload (`impostor_task`'s component, which
/// serves the same skill) answers `{"impostor": true}`.
fn version_of(job: &Value) -> u32 {
    assert_eq!(job["status"], "finished", "{job}");
    if job["result"]["impostor"] == true {
        2
    } else {
        assert!(job["result"]["processed_message"].is_string(), "{job}");
        1
    }
}

async fn run_jobs(stack: &Stack, n: usize) -> Vec<u32> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            stack
                .create("/jobs/test", echo_body(&format!("j{i}"), 1))
                .await,
        );
    }
    let mut out = Vec::new();
    for id in ids {
        out.push(version_of(&stack.finished(&id).await));
    }
    out
}

#[tokio::test]
async fn a_new_version_deployed_under_load_fails_no_job_and_rolls_back() {
    let mut stack = empty_stack();
    stack.start_orchestrator();
    stack.wait_ready().await;
    let ids = ["load-a", "load-b"];
    let workers: Vec<Proc> = ids
        .iter()
        .map(|id| stack.spawn_worker(id, &format!("{id}.log"), |_| {}))
        .collect();
    wait_registered(&stack, &ids).await;
    let v1 = std::fs::read(plugin_fixtures::ECHO_TASK).unwrap();
    let v2 = std::fs::read(plugin_fixtures::IMPOSTOR_TASK).unwrap();
    assert_eq!(upload(&stack, DEPLOY_TOKEN, "echo_task", &v1).await.0, 201);
    wait_all_run(&stack, &ids, "echo_task", 1).await;

    // 1,000 jobs from 20 clients, each creating a job and waiting for it.
    let stack = Arc::new(stack);
    let created = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..20 {
        let stack = stack.clone();
        let created = created.clone();
        clients.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            while created.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 1000 {
                let id = stack.create("/jobs/test", echo_body("load", 1)).await;
                versions.push(version_of(&stack.finished(&id).await));
            }
            versions
        }));
    }
    wait_until(
        "300 jobs to be created",
        Duration::from_secs(120),
        || async { created.load(std::sync::atomic::Ordering::SeqCst) >= 300 },
    )
    .await;
    let (status, answer) = send(
        &stack,
        reqwest::Method::POST,
        "/api/v1/plugins?name=echo_task",
        DEPLOY_TOKEN,
        "",
    )
    .await;
    assert_eq!(status, 400, "an empty upload is refused: {answer}");
    let resp = stack
        .http
        .post(format!("{}/api/v1/plugins?name=echo_task", stack.base))
        .header("X-Client-Token", DEPLOY_TOKEN)
        .header("Content-Type", "application/wasm")
        .body(v2.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201, "raw upload of v2");
    let uploaded = Instant::now();
    wait_all_run(&stack, &ids, "echo_task", 2).await;
    let took = uploaded.elapsed();
    let in_flight = created.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!(
        "v2 reached both workers {took:?} after the upload ({in_flight} jobs created so far)"
    );
    assert!(in_flight < 1000, "the switch happened under load");
    assert!(
        took < Duration::from_secs(2),
        "v2 took {took:?} to reach every worker under load"
    );
    let mut during = Vec::new();
    for c in clients {
        during.extend(c.await.unwrap());
    }
    assert_eq!(during.len(), 1000, "every job of the load finished");
    let (old, new) = (
        during.iter().filter(|v| **v == 1).count(),
        during.iter().filter(|v| **v == 2).count(),
    );
    assert!(old > 0 && new > 0, "v1: {old}, v2: {new}");
    // After the switch, only v2 answers.
    assert!(run_jobs(&stack, 40).await.iter().all(|v| *v == 2));

    let (status, answer) = send(
        &stack,
        reqwest::Method::POST,
        "/api/v1/plugins/echo_task/rollback",
        DEPLOY_TOKEN,
        "",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["current_version"], 1);
    wait_all_run(&stack, &ids, "echo_task", 1).await;
    assert!(run_jobs(&stack, 40).await.iter().all(|v| *v == 1));

    // Rolling forward to a named version, then deleting: the skill goes away.
    let (status, _) = send(
        &stack,
        reqwest::Method::POST,
        "/api/v1/plugins/echo_task/rollback",
        DEPLOY_TOKEN,
        r#"{"version": 2}"#,
    )
    .await;
    assert_eq!(status, 200);
    wait_all_run(&stack, &ids, "echo_task", 2).await;
    let (status, _) = send(
        &stack,
        reqwest::Method::DELETE,
        "/api/v1/plugins/echo_task",
        DEPLOY_TOKEN,
        "",
    )
    .await;
    assert_eq!(status, 200);
    wait_until(
        "echo_task to be withdrawn",
        Duration::from_secs(30),
        || async {
            let (_, w) = stack.get("/api/v1/workers").await;
            ids.iter().all(|id| !serves(&w, id, "echo_task"))
        },
    )
    .await;
    let mut stack = Arc::try_unwrap(stack).ok().unwrap();
    for mut w in workers.into_iter() {
        w.stop();
        assert!(!w.log_text().contains("panicked"));
    }
    stack.orchestrator.as_mut().unwrap().stop();
    no_panics(&stack, &[]);
}

#[tokio::test]
async fn bad_uploads_and_ordinary_tokens_change_nothing() {
    let mut stack = Stack::new();
    stack.start().await;
    let echo = std::fs::read(plugin_fixtures::ECHO_TASK).unwrap();
    let (_, before) = stack.get("/api/v1/plugins").await;
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let cli = std::fs::read(plugin_fixtures::CLI_COMMAND).unwrap();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "truncated",
            echo[..echo.len() / 2].to_vec(),
            "not a valid component",
        ),
        (
            "garbage",
            b"GIF89a, not wasm at all".to_vec(),
            "not a WebAssembly file",
        ),
        (
            "core module",
            core_module,
            "core WebAssembly module, not a component",
        ),
        ("another world", cli, "a component of another world"),
    ];
    for (what, bytes, reason) in cases {
        let (status, answer) = upload(&stack, DEPLOY_TOKEN, "echo_task", &bytes).await;
        assert_eq!(status, 400, "{what}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(reason), "{what}: {error}");
    }
    // An ordinary client token may read but not deploy; no token: 401.
    // (Refused before the body is read: a small body, so the client is done
    // sending when the answer comes.)
    let small = &echo[..512];
    let (status, answer) = upload(&stack, CLIENT_TOKEN, "echo_task", small).await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("may not deploy"));
    assert_eq!(upload(&stack, "wrong", "echo_task", small).await.0, 401);
    for (method, path) in [
        (reqwest::Method::POST, "/api/v1/plugins/echo_task/rollback"),
        (reqwest::Method::DELETE, "/api/v1/plugins/echo_task"),
        (reqwest::Method::PUT, "/api/v1/blueprints/test_flow"),
    ] {
        let (status, answer) = send(&stack, method, path, CLIENT_TOKEN, "").await;
        assert_eq!(status, 403, "{path}: {answer}");
    }
    let (status, answer) = upload(&stack, DEPLOY_TOKEN, "../evil", &echo).await;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = send(
        &stack,
        reqwest::Method::POST,
        "/api/v1/plugins/nothing/rollback",
        DEPLOY_TOKEN,
        "",
    )
    .await;
    assert_eq!(status, 404, "{answer}");

    let (_, after) = stack.get("/api/v1/plugins").await;
    assert_eq!(before, after, "the registry is unchanged");
    assert_eq!(after["plugins"], json!([]));
    // The worker still serves its own plugins.
    stack.wait_heartbeat(WORKER_ID).await;
    let view = stack.worker_view(WORKER_ID).await.unwrap();
    assert_eq!(
        view["supported_skills"],
        json!(["echo_task", "failing_task"])
    );
    let id = stack.create("/jobs/test", echo_body("still", 1)).await;
    assert_eq!(
        stack.finished(&id).await["result"]["processed_message"],
        "still"
    );
}

#[tokio::test]
async fn a_restarted_worker_serves_deployed_plugins_from_its_compiled_cache() {
    let mut stack = empty_stack();
    stack.start_orchestrator();
    stack.wait_ready().await;
    let mut worker = stack.spawn_worker(WORKER_ID, "first.log", |_| {});
    wait_registered(&stack, &[WORKER_ID]).await;
    let echo = std::fs::read(plugin_fixtures::ECHO_TASK).unwrap();
    assert_eq!(
        upload(&stack, DEPLOY_TOKEN, "echo_task", &echo).await.0,
        201
    );
    wait_all_run(&stack, &[WORKER_ID], "echo_task", 1).await;
    worker.stop();
    let first = worker.log_text();
    assert!(first.contains("compiled in"), "{first}");
    assert!(first.contains("cached for the next start"), "{first}");

    stack.worker = Some(stack.spawn_worker(WORKER_ID, "second.log", |_| {}));
    wait_until(
        "the restarted worker to serve echo_task",
        Duration::from_secs(60),
        || async {
            stack
                .worker_view(WORKER_ID)
                .await
                .is_some_and(|w| w["supported_skills"] == json!(["echo_task"]))
        },
    )
    .await;
    let id = stack.create("/jobs/test", echo_body("cached", 2)).await;
    assert_eq!(
        stack.finished(&id).await["result"]["processed_message"],
        "cached cached"
    );
    let second = stack.worker.as_ref().unwrap().log_text();
    assert!(
        second.contains("compiled code loaded from the cache"),
        "{second}"
    );
    assert!(!second.contains("compiled in"), "compiled again: {second}");
    assert!(second.contains("component found in"), "{second}");
    assert!(!second.contains("downloaded"), "downloaded again: {second}");
}

/// Two echo tasks; the messages name the blueprint version.
fn two_step_flow(tag: &str) -> String {
    format!(
        r#"
name = "versioned"
api_endpoint = "/jobs/versioned"
api_version = "v1"
[states.first]
start = true
dispatch.task = "echo_task"
dispatch.params.message = "'{tag}-first'"
dispatch.params.work_ms = "initial.work_ms | default(0)"
dispatch.on = {{ success = "second" }}
[states.second]
dispatch.task = "echo_task"
dispatch.params.message = "'{tag}-second'"
dispatch.on = {{ success = "done" }}
[states.done]
end = "finished"
"#
    )
}

#[tokio::test]
async fn blueprints_deployed_through_the_api_take_new_jobs_and_leave_running_ones() {
    let mut stack = Stack::new();
    stack.add_blueprint("versioned", &two_step_flow("v1"));
    stack.start().await;
    let put = |text: String| {
        let stack = &stack;
        async move {
            send(
                stack,
                reqwest::Method::PUT,
                "/api/v1/blueprints/versioned",
                DEPLOY_TOKEN,
                &text,
            )
            .await
        }
    };
    // A slow job starts on v1.
    let slow = stack
        .create("/jobs/versioned", json!({"work_ms": 1500}))
        .await;
    let (status, answer) = put(two_step_flow("v2")).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["version"], 2);
    let fresh = stack.create("/jobs/versioned", json!({})).await;
    let slow = stack.finished(&slow).await;
    let fresh = stack.finished(&fresh).await;
    assert_eq!(slow["blueprint_version"], 1);
    assert_eq!(
        slow["results"]["second"]["processed_message"], "v1-second",
        "the running job stays on v1 after the deploy: {slow}"
    );
    assert_eq!(fresh["blueprint_version"], 2);
    assert_eq!(fresh["results"]["first"]["processed_message"], "v2-first");

    // A broken version is refused, naming the state; v2 stays.
    let broken = two_step_flow("v3").replace("success = \"done\"", "success = \"nowhere\"");
    let (status, answer) = put(broken).await;
    assert_eq!(status, 400, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("state `second`") && error.contains("nowhere"),
        "{error}"
    );
    let (status, answer) = put("name = \"other\"\n".into()).await;
    assert_eq!(status, 400, "{answer}");
    let (_, current) = stack.get("/api/v1/blueprints/versioned").await;
    assert_eq!(current["version"], 2, "{current}");
    assert_eq!(current["versions"].as_array().unwrap().len(), 2);
    let (_, v1) = stack.get("/api/v1/blueprints/versioned?version=1").await;
    assert!(v1["text"].as_str().unwrap().contains("v1-first"));

    // A new endpoint serves at once, under a new API version too.
    let brand_new = one_task_flow("echo_task")
        .replace("one_echo_task", "brand_new")
        .replace("/jobs/one/echo_task", "/jobs/brand-new")
        .replace("api_version = \"v1\"", "api_version = \"v7\"")
        .replace(
            "dispatch.params.bytes = \"initial.bytes\"",
            "dispatch.params.message = \"'new'\"",
        )
        .replace("dispatch.params.ms = \"initial.ms\"\n", "");
    let (status, answer) = send(
        &stack,
        reqwest::Method::PUT,
        "/api/v1/blueprints/brand_new",
        DEPLOY_TOKEN,
        &brand_new,
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let resp = stack
        .http
        .post(format!("{}/api/v7/jobs/brand-new", stack.base))
        .header("X-Client-Token", CLIENT_TOKEN)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let id = resp.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, job) = stack.get(&format!("/api/v7/jobs/{id}?wait=30")).await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["result"]["processed_message"], "new", "{job}");

    // The directory is watched: a changed file is the next version.
    stack.add_blueprint("versioned", &two_step_flow("v3"));
    wait_until("the file's version", Duration::from_secs(20), || async {
        stack.get("/api/v1/blueprints/versioned").await.1["version"] == 3
    })
    .await;
    let id = stack.create("/jobs/versioned", json!({})).await;
    assert_eq!(
        stack.finished(&id).await["results"]["second"]["processed_message"],
        "v3-second"
    );

    // Versions survive a restart; the unchanged file adds none.
    stack.orchestrator.as_mut().unwrap().stop();
    stack.start_orchestrator();
    stack.wait_ready().await;
    let (_, after) = stack.get("/api/v1/blueprints/versioned").await;
    assert_eq!(after["version"], 3, "{after}");
    assert_eq!(after["versions"].as_array().unwrap().len(), 3);
    let (_, brand) = stack.get("/api/v1/blueprints/brand_new").await;
    assert_eq!(brand["origin"], "api:deployer");
}

#[tokio::test]
async fn a_version_a_worker_cannot_run_is_reported_and_the_previous_one_stays() {
    let mut stack = empty_stack();
    stack.start_orchestrator();
    stack.wait_ready().await;
    stack.start_worker();
    wait_registered(&stack, &[WORKER_ID]).await;
    let echo = std::fs::read(plugin_fixtures::ECHO_TASK).unwrap();
    assert_eq!(
        upload(&stack, DEPLOY_TOKEN, "echo_task", &echo).await.0,
        201
    );
    wait_all_run(&stack, &[WORKER_ID], "echo_task", 1).await;

    // v2 asks (in its manifest) for outbound HTTP, which this worker's
    // policy (none) does not grant.
    let manifest = "[http]\nallowed_origins = [\"https://example.com\"]\n";
    let (content_type, body) = multipart("echo_task", &echo, Some(manifest));
    let resp = stack
        .http
        .post(format!("{}/api/v1/plugins", stack.base))
        .header("X-Client-Token", DEPLOY_TOKEN)
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let failed = |listing: &Value| {
        listing["plugins"][0]["workers"]
            .as_array()
            .and_then(|ws| ws.iter().find(|w| w["worker_id"] == WORKER_ID).cloned())
            .filter(|w| w["state"] == "failed" && w["version"] == 2)
    };
    wait_until(
        "the worker to report v2 as failed",
        Duration::from_secs(30),
        || async { failed(&stack.get("/api/v1/plugins").await.1).is_some() },
    )
    .await;
    let (_, listing) = stack.get("/api/v1/plugins").await;
    let report = failed(&listing).unwrap();
    assert_eq!(report["running_version"], 1, "{report}");
    let error = report["error"].as_str().unwrap();
    assert!(error.contains("https://example.com"), "{error}");
    let id = stack.create("/jobs/test", echo_body("kept", 1)).await;
    assert_eq!(
        stack.finished(&id).await["result"]["processed_message"],
        "kept"
    );
    let log = stack.worker.as_ref().unwrap().log_text();
    assert!(log.contains("cannot run plugin echo_task v2"), "{log}");
    assert!(log.contains("v1 stays in service"), "{log}");

    // The registry survives a restart of the orchestrator, and the worker
    // reports again when it re-registers.
    stack.orchestrator.as_mut().unwrap().stop();
    stack.start_orchestrator();
    stack.wait_ready().await;
    let (_, listing) = stack.get("/api/v1/plugins").await;
    assert_eq!(listing["plugins"][0]["current_version"], 2, "{listing}");
    assert_eq!(
        listing["plugins"][0]["versions"].as_array().unwrap().len(),
        2
    );
    wait_until(
        "the report after the restart",
        Duration::from_secs(30),
        || async { failed(&stack.get("/api/v1/plugins").await.1).is_some() },
    )
    .await;
}
