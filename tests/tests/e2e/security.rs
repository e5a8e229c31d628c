//! The HTTP surfaces under hostile clients and workers, with real processes
//! and sockets on loopback (bounded in count and time).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn register(stack: &Stack, worker: &str, skills: usize) -> (u16, Value) {
    let skills: Vec<Value> = (0..skills)
        .map(|i| json!({"name": format!("skill_{i}")}))
        .collect();
    worker_post(
        stack,
        reqwest::Method::POST,
        "/_worker/workers/register",
        worker,
        json!({"worker_id": worker, "worker_type": "t", "supported_skills": skills}),
    )
    .await
}

#[tokio::test]
async fn a_heartbeat_listing_many_tasks_does_not_hold_up_clients() {
    let stack = orchestrator_with("").await;
    // 2,000 jobs waiting for a task type nobody serves.
    for _ in 0..2000 {
        stack.create("/jobs/ghost", json!({})).await;
    }
    assert_eq!(register(&stack, "flooder", 1).await.0, 200);
    let ids: Vec<String> = (0..10_000).map(|i| format!("task-{i:08}")).collect();
    let path = "/_worker/workers/flooder";
    let flood = {
        let (http, base) = (stack.http.clone(), stack.base.clone());
        let ids = ids.clone();
        tokio::spawn(async move {
            for _ in 0..10 {
                let mut body = json!({"worker_id": "flooder", "status": "busy", "current_tasks": ids, "nonce": uuid_like()});
                rxon::seal(&mut body, "flooder", WORKER_TOKEN, chrono_now());
                let resp = http
                    .patch(format!("{base}{path}"))
                    .header("X-Worker-Token", WORKER_TOKEN)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status().as_u16(), 200);
                let v: Value = resp.json().await.unwrap();
                // None of them is held by this worker: all are to be cancelled.
                assert_eq!(v["cancel_task_ids"].as_array().unwrap().len(), 10_000);
            }
        })
    };
    let mut slowest = Duration::ZERO;
    while !flood.is_finished() {
        let started = Instant::now();
        let (status, _) = stack.get("/api/v1/workers").await;
        assert_eq!(status, 200);
        slowest = slowest.max(started.elapsed());
    }
    flood.await.unwrap();
    eprintln!("slowest client GET during the heartbeat flood: {slowest:?}");
    assert!(
        slowest < Duration::from_millis(1000),
        "a client waited {slowest:?}"
    );
    // Past the bound: refused.
    let too_many: Vec<String> = (0..10_001).map(|i| format!("t{i}")).collect();
    let (status, body) = worker_post(
        &stack,
        reqwest::Method::PATCH,
        path,
        "flooder",
        json!({"worker_id": "flooder", "status": "busy", "current_tasks": too_many}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("at most 10000"),
        "{body}"
    );
}

#[tokio::test]
async fn unauthenticated_bodies_are_refused_before_they_are_read() {
    // 100 wrong tokens from one address: no limit on them here (see the
    // next test for the limit).
    let stack = orchestrator_with("auth_failures_per_minute = 0\n").await;
    let rss_before = stack.orchestrator.as_ref().unwrap().peak_rss_kib().unwrap();
    let mut conns = Vec::new();
    for i in 0..100 {
        let mut s = TcpStream::connect(("127.0.0.1", stack.port)).await.unwrap();
        let (path, header) = if i % 2 == 0 {
            ("/api/v1/jobs/test", "X-Client-Token: wrong")
        } else {
            ("/_worker/tasks/result", "X-Worker-Token: wrong")
        };
        // Announces 1 MiB, sends 1 KiB of it, and waits.
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{header}\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&[b' '; 1024]).await.unwrap();
        conns.push(s);
    }
    for (i, s) in conns.iter_mut().enumerate() {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("answered without waiting for the body")
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        let expected = if i % 2 == 0 { "401" } else { "403" };
        assert!(text.starts_with(&format!("HTTP/1.1 {expected}")), "{text}");
    }
    let rss_after = stack.orchestrator.as_ref().unwrap().peak_rss_kib().unwrap();
    eprintln!("orchestrator peak RSS {rss_before} KiB → {rss_after} KiB");
    assert!(
        rss_after < rss_before + 20 * 1024,
        "{rss_before} → {rss_after} KiB"
    );
}

/// GET /api/v1/jobs with `token` (none: no header); status, `Retry-After`
/// and body.
async fn list_jobs_with(stack: &Stack, token: Option<&str>) -> (u16, Option<u64>, Value) {
    let mut request = stack.http.get(format!("{}/api/v1/jobs", stack.base));
    if let Some(token) = token {
        request = request.header("X-Client-Token", token);
    }
    let resp = request.send().await.unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (status, retry, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn wrong_tokens_past_the_limit_are_refused_and_right_ones_still_pass() {
    let stack = orchestrator_with("auth_failures_per_minute = 3\n").await;
    let sign_in = |token: &str| {
        stack
            .http
            .post(format!("{}/ui/session", stack.base))
            .header("X-Requested-With", "taskworker-dashboard")
            .json(&json!({"token": token}))
            .send()
    };

    // A missing token is not a wrong one: never counted.
    for _ in 0..5 {
        assert_eq!(list_jobs_with(&stack, None).await.0, 401);
    }
    assert_eq!(list_jobs_with(&stack, Some(CLIENT_TOKEN)).await.0, 200);

    // Three wrong client credentials (two tokens, one dashboard sign-in)
    // reach the limit…
    for _ in 0..2 {
        assert_eq!(list_jobs_with(&stack, Some("wrong")).await.0, 401);
    }
    assert_eq!(sign_in("wrong").await.unwrap().status().as_u16(), 401);
    // …so a further wrong one is refused with 429 and Retry-After…
    let (status, retry, body) = list_jobs_with(&stack, Some("wrong")).await;
    assert_eq!(status, 429, "{body}");
    let retry = retry.expect("Retry-After");
    assert!((1..=60).contains(&retry), "{retry}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("127.0.0.1") && error.contains("auth_failures_per_minute = 3"),
        "{error}"
    );
    assert_eq!(sign_in("wrong").await.unwrap().status().as_u16(), 429);
    // …while the right credential from the same address always passes (a
    // NAT or a proxy shares one address between guessers and real users).
    assert_eq!(list_jobs_with(&stack, Some(CLIENT_TOKEN)).await.0, 200);
    assert_eq!(sign_in(CLIENT_TOKEN).await.unwrap().status().as_u16(), 200);

    // Workers are counted apart: one on the same host still registers…
    assert_eq!(register(&stack, "w-right", 1).await.0, 200);
    // …and wrong worker tokens past the limit get 429, the right one not.
    let wrong_worker = || {
        stack
            .http
            .post(format!("{}/_worker/workers/register", stack.base))
            .header("X-Worker-Token", "wrong")
            .json(&json!({"worker_id": "w-wrong"}))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(wrong_worker().await.unwrap().status().as_u16(), 403);
    }
    let refused = wrong_worker().await.unwrap();
    assert_eq!(refused.status().as_u16(), 429);
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("worker"), "{body}");
    assert_eq!(register(&stack, "w-right", 1).await.0, 200);

    let (log, _) = stack.logs();
    assert!(
        log.contains("127.0.0.1 sent 3 wrong client credentials")
            && log.contains("127.0.0.1 sent 3 wrong worker credentials"),
        "{log}"
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_is_the_one_refused() {
    let stack =
        orchestrator_with("auth_failures_per_minute = 2\ntrusted_proxies = [\"127.0.0.0/8\"]\n")
            .await;
    let from = |forwarded: Option<&str>, token: &str| {
        let mut request = stack
            .http
            .get(format!("{}/api/v1/jobs", stack.base))
            .header("X-Client-Token", token);
        if let Some(f) = forwarded {
            request = request.header("X-Forwarded-For", f);
        }
        request.send()
    };
    let status = |r: reqwest::Response| r.status().as_u16();
    // The client wrote the first hop itself; the proxy added the second.
    let hops = "10.9.9.9, 198.51.100.7";
    for _ in 0..2 {
        assert_eq!(status(from(Some(hops), "wrong").await.unwrap()), 401);
    }
    let refused = from(Some(hops), "wrong").await.unwrap();
    assert_eq!(refused.status().as_u16(), 429);
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("198.51.100.7"),
        "{body}"
    );
    // Another address behind the same proxy, and the proxy itself, are
    // still counted apart: their wrong tokens get 401, not 429.
    assert_eq!(
        status(from(Some("198.51.100.8"), "wrong").await.unwrap()),
        401
    );
    assert_eq!(status(from(None, "wrong").await.unwrap()), 401);
    assert_eq!(status(from(Some(hops), CLIENT_TOKEN).await.unwrap()), 200);
}

#[tokio::test]
async fn slow_loris_connections_are_closed_and_the_server_keeps_serving() {
    let stack = orchestrator_with("header_read_timeout_seconds = 2\nmax_connections = 60\n").await;
    let mut conns = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(("127.0.0.1", stack.port)).await.unwrap();
        s.write_all(b"GET /_public/status HTTP/1.1\r\nX-A: ")
            .await
            .unwrap();
        conns.push(s);
    }
    let started = Instant::now();
    // One header byte every 300 ms: never finishes its headers.
    let mut open = conns.len();
    while open > 0 && started.elapsed() < Duration::from_secs(10) {
        open = 0;
        for s in conns.iter_mut() {
            if s.write_all(b"a").await.is_ok() {
                let mut buf = [0u8; 64];
                match tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => {}
                    _ => open += 1,
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let took = started.elapsed();
    eprintln!("slow-loris connections closed after {took:?}");
    assert_eq!(open, 0, "{open} slow connections still open after {took:?}");
    assert!(
        took >= Duration::from_secs(2),
        "closed before the timeout: {took:?}"
    );
    let (status, _) = stack.get("/api/v1/workers").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn webhook_urls_are_checked_and_private_targets_refused() {
    let mut stack = Stack::new();
    stack.start().await;
    for (url, why) in [
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "metadata"),
        ("http://[::1]:9/hook", "loopback"),
        ("http://10.0.0.1/hook", "private"),
        // Forms an outside review found accepted: NAT64 of the metadata
        // address, IPv4-compatible loopback, benchmarking, reserved.
        (
            "http://[64:ff9b::a9fe:a9fe]/",
            "NAT64 form of 169.254.169.254",
        ),
        ("http://[::7f00:1]:8080/", "IPv4-compatible"),
        ("http://198.18.0.1/", "benchmarking"),
        ("http://240.0.0.1/", "reserved"),
        ("ftp://example.com/hook", "http(s)"),
        ("http://example.com/a\r\nX-Injected: 1", "control"),
        ("http://", "host"),
        ("not-a-url", "not a URL"),
    ] {
        let (status, body) = stack
            .try_create(
                "/jobs/test",
                json!({"initial_data": {}, "webhook_url": url}),
            )
            .await;
        assert_eq!(status, 400, "{url}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains("webhook_url"), "{url}: {error}");
        assert!(error.contains(why), "{url}: {error}");
    }
    // A name is checked where it is resolved: localhost is loopback.
    let (status, body) = stack
        .try_create(
            "/jobs/test",
            json!({"initial_data": {"message": "m"}, "webhook_url": "http://localhost:9/hook"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let job = stack.finished(body["job_id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "finished");
    wait_until(
        "the egress refusal in the log",
        Duration::from_secs(20),
        || async {
            stack
                .logs()
                .0
                .contains("egress refused: localhost resolves to")
        },
    )
    .await;
}

#[tokio::test]
async fn registrations_and_skills_are_bounded() {
    let stack = orchestrator_with("max_workers = 3\nmax_skills_per_worker = 50\n").await;
    let (status, body) = register(&stack, "greedy", 51).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("at most 50"),
        "{body}"
    );
    for i in 0..3 {
        assert_eq!(register(&stack, &format!("w{i}"), 50).await.0, 200);
    }
    let (status, body) = register(&stack, "w3", 1).await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("max_workers"),
        "{body}"
    );
    // A known worker may register again.
    assert_eq!(register(&stack, "w0", 2).await.0, 200);
}

#[tokio::test]
async fn numeric_query_parameters_at_their_extremes() {
    let mut stack = Stack::new();
    stack.start().await;
    let id = stack.create("/jobs/test", echo_body("x", 1)).await;
    stack.finished(&id).await;
    let (status, v) = stack.get("/api/v1/jobs?offset=10000").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["jobs"].as_array().unwrap().len(), 0, "{v}");
    // Deeper pages are found by cursor.
    let (status, v) = stack.get("/api/v1/jobs?offset=18446744073709551615").await;
    assert_eq!(status, 400, "{v}");
    let (status, v) = stack.get("/api/v1/jobs?limit=0").await;
    assert_eq!((status, v["limit"].clone()), (200, json!(1)));
    let (status, v) = stack.get("/api/v1/jobs?limit=18446744073709551615").await;
    assert_eq!((status, v["limit"].clone()), (200, json!(1000)));
    for bad in ["offset=-1", "offset=99999999999999999999999", "limit=x"] {
        let (status, v) = stack.get(&format!("/api/v1/jobs?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {v}");
    }
}

#[tokio::test]
async fn a_worker_stopping_under_load_loses_no_task() {
    let mut stack = Stack::new();
    stack.start().await;
    let mut ids = Vec::new();
    for cycle in 0..6 {
        for i in 0..15 {
            ids.push(
                stack
                    .create("/jobs/test", echo_body(&format!("c{cycle}-{i}"), 1))
                    .await,
            );
        }
        // SIGTERM while tasks are being handed out, then a new process.
        stack.worker.as_mut().unwrap().stop();
        stack.worker = Some(stack.spawn_worker(WORKER_ID, &format!("worker-{cycle}.log"), |_| {}));
    }
    let started = Instant::now();
    for id in &ids {
        let job = stack.finished(id).await;
        assert_eq!(job["status"], "finished", "{job}");
    }
    // None waited for a liveness timeout.
    let (orchestrator_log, _) = stack.logs();
    assert!(
        !orchestrator_log.contains("has not been heard from"),
        "a task waited for the TTL"
    );
    eprintln!(
        "all {} jobs finished {:?} after the last restart",
        ids.len(),
        started.elapsed()
    );
}

#[tokio::test]
async fn job_data_is_previewed_at_info_not_logged_whole() {
    let mut stack = Stack::new();
    stack.start().await;
    let big = "z".repeat(100_000);
    let id = stack.create("/jobs/test", echo_body(&big, 2)).await;
    let job = stack.finished(&id).await;
    assert_eq!(job["status"], "finished");
    // The host's own lines preview job data in 256 bytes; what the plugin
    // itself logs is cut at 2 KiB.
    let (orchestrator, worker) = stack.logs();
    for (name, log, max) in [
        ("orchestrator", orchestrator, 1024),
        ("worker", worker, 2300),
    ] {
        let longest = log.lines().map(str::len).max().unwrap_or(0);
        assert!(longest < max, "{name} logged a {longest}-byte line");
    }
}
