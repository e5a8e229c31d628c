//! Availability under hostile peers (issue 29): each case with real
//! processes and sockets on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crate::support::*;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the server closed `s` (EOF or reset) within `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn silent_and_preface_only_sockets_are_closed_and_the_server_answers() {
    let stack = orchestrator_with("header_read_timeout_seconds = 2\nmax_connections = 256\n").await;
    let mut held = Vec::new();
    for i in 0..400 {
        let mut s = TcpStream::connect(("127.0.0.1", stack.port)).await.unwrap();
        if i % 2 == 1 {
            s.write_all(H2_PREFACE).await.unwrap();
        }
        held.push(s);
    }
    // Every permit is taken by a socket that says nothing more: this request
    // waits in the backlog until they are closed.
    // A new connection (not one kept from waiting for the server).
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let started = Instant::now();
    let resp = fresh
        .get(format!("{}/_public/status", stack.base))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    eprintln!("/_public/status answered after {took:?} behind 400 silent sockets");
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        took <= Duration::from_secs(3),
        "answered after {took:?}, more than the timeout (2 s) plus one second"
    );
    // The sockets themselves are closed by now or soon (those accepted late
    // get their own 2 s).
    for s in held.iter_mut() {
        assert!(closed_within(s, Duration::from_secs(5)).await);
    }
    stack.assert_no_panic();
}

#[tokio::test]
async fn idle_keep_alive_and_idle_http2_connections_are_closed() {
    let stack = orchestrator_with("header_read_timeout_seconds = 2\n").await;
    // HTTP/1.1: one request, then silence.
    let mut h1 = TcpStream::connect(("127.0.0.1", stack.port)).await.unwrap();
    h1.write_all(b"GET /_public/status HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = h1.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let idle = Instant::now();
    assert!(closed_within(&mut h1, Duration::from_secs(4)).await);
    assert!(
        idle.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        idle.elapsed()
    );

    // HTTP/2: a full handshake and one request, then no stream open.
    let tcp = TcpStream::connect(("127.0.0.1", stack.port)).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let ended = tokio::spawn(async move {
        let _ = conn.await;
        Instant::now()
    });
    let request = hyper::Request::get(format!("{}/_public/status", stack.base))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = send.send_request(request).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    drop(response);
    let idle = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(4), ended)
        .await
        .expect("the idle HTTP/2 connection is still open after 4 s")
        .unwrap();
    assert!(closed.duration_since(idle) >= Duration::from_millis(1500));
    stack.assert_no_panic();
}

/// A body that never comes: its stream stays open.
fn endless_body() -> http_body_util::StreamBody<
    futures_util::stream::Pending<Result<hyper::body::Frame<Bytes>, std::io::Error>>,
> {
    http_body_util::StreamBody::new(futures_util::stream::pending())
}

#[tokio::test]
async fn a_body_that_does_not_come_is_answered_408_on_both_protocols() {
    let stack =
        orchestrator_with("header_read_timeout_seconds = 2\nbody_read_timeout_seconds = 1\n").await;
    // HTTP/1.1: headers promise 100 bytes, 10 come.
    let mut h1 = TcpStream::connect(("127.0.0.1", stack.port)).await.unwrap();
    h1.write_all(
        format!(
            "POST /api/v1/jobs/test HTTP/1.1\r\nHost: x\r\nX-Client-Token: {CLIENT_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"message\""
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(5), h1.read(&mut buf))
        .await
        .expect("no answer to a body that never came")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_read_timeout_seconds"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // HTTP/2: a stream opened with its headers, its body never sent.
    let tcp = TcpStream::connect(("127.0.0.1", stack.port)).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let request = hyper::Request::post(format!("{}/api/v1/jobs/test", stack.base))
        .header("X-Client-Token", CLIENT_TOKEN)
        .body(endless_body())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), send.send_request(request))
        .await
        .expect("no answer on the idle HTTP/2 stream")
        .unwrap();
    assert_eq!(response.status().as_u16(), 408);
    stack.assert_no_panic();
}

#[tokio::test]
async fn fallback_routes_and_sign_in_answer_before_reading_a_body() {
    let stack = orchestrator_with("body_read_timeout_seconds = 30\n").await;
    let cases = [
        // No route, not a create-job endpoint: 404 without the body.
        ("POST /no/such/thing HTTP/1.1", "", "HTTP/1.1 404"),
        ("PUT /api/v1/jobs/test HTTP/1.1", "", "HTTP/1.1 401"),
        (
            "PUT /api/v1/jobs/test HTTP/1.1",
            "X-Client-Token: test-client-token\r\n",
            "HTTP/1.1 405",
        ),
        // Sign-in without the dashboard's header: 403 before the body.
        ("POST /ui/session HTTP/1.1", "", "HTTP/1.1 403"),
    ];
    for (line, extra, expected) in cases {
        let mut s = TcpStream::connect(("127.0.0.1", stack.port)).await.unwrap();
        s.write_all(
            format!("{line}\r\nHost: x\r\n{extra}Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = vec![0u8; 2048];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{line}: no answer before the body"))
            .unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(answer.starts_with(expected), "{line}: {answer}");
    }
    // A sign-in body is small: a large one is refused as too large.
    let resp = stack
        .http
        .post(format!("{}/ui/session", stack.base))
        .header("X-Requested-With", "taskworker-dashboard")
        .json(&json!({"token": "x".repeat(100_000)}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().is_some(), "{body}");
    stack.assert_no_panic();
}

/// Series per metric name in a Prometheus text page (histogram buckets,
/// sums and counts of one label set are one series).
fn series_per_metric(text: &str) -> std::collections::BTreeMap<String, usize> {
    let mut sets: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, labels) = match line.find('{') {
            Some(i) => (&line[..i], &line[i..line.rfind('}').unwrap_or(line.len())]),
            None => (line.split_whitespace().next().unwrap_or_default(), ""),
        };
        let base = name
            .strip_suffix("_bucket")
            .or_else(|| name.strip_suffix("_sum"))
            .or_else(|| name.strip_suffix("_count"))
            .unwrap_or(name);
        let labels: Vec<&str> = labels
            .trim_matches(|c| c == '{' || c == '}')
            .split("\",")
            .filter(|l| !l.starts_with("le=") && !l.is_empty())
            .collect();
        sets.entry(base.to_string())
            .or_default()
            .insert(labels.join(","));
    }
    sets.into_iter().map(|(k, v)| (k, v.len())).collect()
}

fn random_token(rng: &mut u64, len: usize) -> String {
    (0..len)
        .map(|_| {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            (b'A' + (*rng % 26) as u8) as char
        })
        .collect()
}

#[tokio::test]
async fn metric_labels_a_peer_chooses_stay_a_bounded_set() {
    let mut stack = Stack::new();
    stack.add_plugin(plugin_fixtures::CHAOS_TASK);
    stack.add_blueprint("one_big_status", &one_task_flow("big_status"));
    stack.start_orchestrator();
    stack.wait_ready().await;
    let worker_metrics = free_port();
    stack.worker = Some(stack.spawn_worker(WORKER_ID, "worker.log", |cmd| {
        cmd.args(["--metrics-listen", &format!("127.0.0.1:{worker_metrics}")]);
    }));
    stack.wait_worker().await;

    // 10,000 requests with invented methods and paths.
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let requests: Vec<(String, String)> = (0..10_000)
        .map(|_| (random_token(&mut rng, 8), random_token(&mut rng, 12)))
        .collect();
    let http = stack.http.clone();
    let base = stack.base.clone();
    futures_util::stream::iter(requests)
        .for_each_concurrent(50, |(method, path)| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
                let resp = http
                    .request(method, format!("{base}/{path}"))
                    .send()
                    .await
                    .unwrap();
                assert!(resp.status().is_client_error(), "{}", resp.status());
            }
        })
        .await;
    // Tasks whose plugin returns 60 different statuses.
    let mut ids = Vec::new();
    for bytes in 1..=60 {
        ids.push(
            stack
                .create("/jobs/one/big_status", json!({"bytes": bytes}))
                .await,
        );
    }
    for id in &ids {
        let job = stack.finished(id).await;
        assert_eq!(job["status"], "failed", "{job}");
    }

    let scrape = |url: String| {
        let http = stack.http.clone();
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let orchestrator = scrape(format!("{}/metrics", stack.base)).await;
    let worker = scrape(format!("http://127.0.0.1:{worker_metrics}/metrics")).await;
    for (who, text) in [("orchestrator", &orchestrator), ("worker host", &worker)] {
        let counts = series_per_metric(text);
        assert!(!counts.is_empty(), "{who}: {text}");
        for (name, n) in &counts {
            assert!(n < &200, "{who}: {name} has {n} series");
        }
        eprintln!("{who}: {counts:?}");
    }
    assert!(
        orchestrator.contains(r#"method="other""#),
        "invented methods are labelled `other`"
    );
    assert!(
        orchestrator.contains(r#"outcome="other""#),
        "undeclared statuses are labelled `other`"
    );
    assert!(worker.contains(r#"outcome="other""#), "{worker}");
    stack.assert_no_panic();
}

/// Five jobs whose 2.5 s task is held by `worker_id`.

#[tokio::test]
async fn the_tasks_of_a_killed_channel_worker_finish_elsewhere_within_ten_seconds() {
    let mut stack = Stack::new();
    stack.add_plugin(plugin_fixtures::CHAOS_TASK);
    stack.add_blueprint("one_sleep", &one_task_flow("sleep"));
    stack.start_orchestrator();
    stack.wait_ready().await;
    // 15 s heartbeats: liveness alone would take 2 × 15 s + 5 s.
    let slow_beats = |cmd: &mut std::process::Command| {
        cmd.env("HEARTBEAT_INTERVAL", "15");
    };
    stack.worker = Some(stack.spawn_worker(WORKER_ID, "worker.log", slow_beats));
    stack.wait_worker().await;
    wait_until("the task channel", Duration::from_secs(20), || async {
        stack
            .logs()
            .0
            .contains("worker local-test-worker opened its task channel")
    })
    .await;
    let ids = stack
        .five_held_tasks(WORKER_ID, 2500, Duration::from_secs(20))
        .await;
    let mut other = stack.spawn_worker("other-worker", "other.log", slow_beats);
    wait_until("the other worker", Duration::from_secs(20), || async {
        stack.worker_view("other-worker").await.is_some()
    })
    .await;
    stack.worker.as_mut().unwrap().kill9();
    let killed = Instant::now();
    for id in &ids {
        let job = stack.finished(id).await;
        assert_eq!(job["status"], "finished", "{job}");
        assert_eq!(job["task_worker_id"], "other-worker", "{job}");
    }
    let took = killed.elapsed();
    eprintln!("all five finished elsewhere {took:?} after the kill");
    assert!(took <= Duration::from_secs(10), "took {took:?}");
    for id in &ids {
        let (_, h) = stack.get(&format!("/api/v1/jobs/{id}/history")).await;
        assert!(
            h.to_string()
                .contains("its worker's task channel closed and it did not come back"),
            "{h}"
        );
    }
    assert!(!other.log_text().contains("panicked"));
    other.stop();
    stack.assert_no_panic();
}

fn nested_message(levels: usize) -> Value {
    let mut v = json!("deep");
    for _ in 0..levels {
        v = json!({ "m": v });
    }
    v
}

#[tokio::test]
async fn deeply_nested_data_is_refused_at_the_edge_and_an_unreadable_task_ends_its_job() {
    let mut stack = Stack::new();
    stack.add_blueprint("one_unreadable", &one_task_flow("unreadable"));
    stack.start_orchestrator();
    stack.wait_ready().await;

    // A client's data nested 125 levels: 400 naming the limit; 60 levels pass.
    let (status, body) = stack
        .try_create(
            "/jobs/test",
            json!({"message": nested_message(125), "multiply": 1}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("MAX_JSON_DEPTH"),
        "{body}"
    );
    let (status, body) = stack
        .try_create(
            "/jobs/test",
            json!({"message": nested_message(60), "multiply": 1}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    // The same limit on the worker side.
    let (status, body) = worker_post(
        &stack,
        reqwest::Method::POST,
        "/_worker/tasks/result",
        "reader",
        json!({"job_id": "x", "task_id": "y", "status": "success", "data": nested_message(100)}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("MAX_JSON_DEPTH"),
        "{body}"
    );

    // A worker takes a task it cannot read, and its heartbeats do not list
    // it: a failed attempt each time (here the only one), so the job ends.
    let (status, body) = worker_post(
        &stack,
        reqwest::Method::POST,
        "/_worker/workers/register",
        "reader",
        json!({"worker_id": "reader", "worker_type": "t", "supported_skills": [{"name": "unreadable"}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let id = stack.create("/jobs/one/unreadable", json!({})).await;
    let task = stack
        .http
        .get(format!(
            "{}/_worker/workers/reader/tasks/next?timeout=5",
            stack.base
        ))
        .header("X-Worker-Token", WORKER_TOKEN)
        .header("X-Worker-Id", "reader")
        .send()
        .await
        .unwrap();
    assert_eq!(task.status().as_u16(), 200);
    let deadline = Instant::now() + Duration::from_secs(40);
    let job = loop {
        let (status, _) = worker_post(
            &stack,
            reqwest::Method::PATCH,
            "/_worker/workers/reader",
            "reader",
            json!({"worker_id": "reader", "status": "idle", "current_tasks": []}),
        )
        .await;
        assert_eq!(status, 200);
        let (_, job) = stack.get(&format!("/api/v1/jobs/{id}")).await;
        if ["failed", "quarantined"].contains(&job["status"].as_str().unwrap_or_default()) {
            break job;
        }
        assert!(Instant::now() < deadline, "the job never ended: {job}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let error = job["error"].to_string();
    assert!(error.contains("no longer lists task"), "{job}");
    stack.assert_no_panic();
}

#[tokio::test]
async fn webhooks_are_delivered_directly_never_through_http_proxy() {
    let receiver_port = free_port();
    let got = webhook_receiver(receiver_port).await;
    // A "proxy" that only counts who connects to it.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_port = proxy.local_addr().unwrap().port();
    let proxied = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = proxied.clone();
    tokio::spawn(async move {
        while let Ok((_sock, _)) = proxy.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let mut stack = Stack::new();
    let proxy_url = format!("http://127.0.0.1:{proxy_port}");
    stack.start_configured("webhook_allowed_hosts = [\"127.0.0.1\"]\n", |cmd| {
        cmd.env("HTTP_PROXY", &proxy_url)
            .env("http_proxy", &proxy_url)
            .env("HTTPS_PROXY", &proxy_url)
            .env("ALL_PROXY", &proxy_url);
    });
    stack.wait_ready().await;
    stack.start_worker();
    stack.wait_worker().await;
    let (status, body) = stack
        .try_create(
            "/jobs/test",
            json!({"initial_data": {"message": "m", "multiply": 1},
                   "webhook_url": format!("http://127.0.0.1:{receiver_port}/hook")}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    wait_until("the webhook", Duration::from_secs(30), || async {
        !got.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        proxied.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the webhook went through HTTP_PROXY"
    );
    stack.assert_no_panic();
}

#[tokio::test]
async fn a_storage_write_that_fails_is_tried_again_whole_and_nothing_is_lost() {
    let mut stack = Stack::new();
    stack.start().await;
    let db = stack.dir.path().join("orchestrator.db");
    // Another process takes the database's write lock for longer than the
    // orchestrator's busy timeout (5 s): its transactions fail meanwhile.
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        locked_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_secs(8));
        conn.execute_batch("COMMIT").unwrap();
    });
    locked_rx.recv().unwrap();
    let started = Instant::now();
    let resp = stack
        .http
        .post(format!("{}/api/v1/jobs/test", stack.base))
        .header("X-Client-Token", CLIENT_TOKEN)
        .json(&json!({"message": "while locked", "multiply": 1}))
        .timeout(Duration::from_secs(40))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    // Answered once saved, after the lock went: not a 500 for a job that runs on.
    assert_eq!(status, 202, "{body}");
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    holder.join().unwrap();
    let id = body["job_id"].as_str().unwrap().to_string();
    let job = stack.finished(&id).await;
    assert_eq!(job["status"], "finished", "{job}");
    let (_, history) = stack.get(&format!("/api/v1/jobs/{id}/history")).await;
    let kinds: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    assert!(kinds.first() == Some(&"created"), "{history}");
    assert!(
        kinds.contains(&"task_dispatched") && kinds.contains(&"finished"),
        "{history}"
    );
    let (log, _) = stack.logs();
    assert!(log.contains("trying the whole transaction again"), "{log}");
    // The restarted orchestrator reads the same, complete job.
    stack.orchestrator.as_mut().unwrap().stop();
    stack.start_orchestrator();
    stack.wait_ready().await;
    let (_, again) = stack.get(&format!("/api/v1/jobs/{id}/history")).await;
    assert_eq!(
        again["events"].as_array().unwrap().len(),
        history["events"].as_array().unwrap().len()
    );
    stack.assert_no_panic();
}

/// A stalled orchestrator: answers a registration (when `register` is
/// set), then accepts every other request and never answers it.
async fn stalled_orchestrator(register: bool) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                while let Some((head, _)) = read_request(&mut sock).await {
                    if !(register && head.starts_with("POST /_worker/workers/register")) {
                        // Never answers; holds the connection.
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    let body = r#"{"status":"registered"}"#;
                    let _ = sock
                        .write_all(
                            format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len())
                                .as_bytes(),
                        )
                        .await;
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn a_stalled_orchestrator_gets_a_timeout_and_a_log_line_for_every_call() {
    let stack = Stack::new();
    for (register, expected) in [
        (false, "registration failed: the orchestrator at"),
        (true, "heartbeat failed: the orchestrator at"),
    ] {
        let port = stalled_orchestrator(register).await;
        let mut worker = stack.spawn_worker(WORKER_ID, &format!("stalled-{register}.log"), |cmd| {
            cmd.env("ORCHESTRATOR_URL", format!("http://127.0.0.1:{port}"))
                .env("CALL_TIMEOUT_SECONDS", "1");
        });
        wait_until(expected, Duration::from_secs(20), || async {
            worker.log_text().contains(expected)
        })
        .await;
        let log = worker.log_text();
        let line = log.lines().find(|l| l.contains(expected)).unwrap();
        assert!(line.contains("did not answer within 1s"), "{line}");
        assert!(worker.is_running(), "{log}");
        worker.stop();
        assert!(!worker.log_text().contains("panicked"));
    }
}

/// A signed registration of `worker` with `token`.
async fn register_with(stack: &Stack, worker: &str, token: &str, metadata: Value) -> (u16, Value) {
    let body = json!({
        "worker_id": worker, "worker_type": "t", "supported_skills": [{"name": "s"}],
        "metadata": metadata,
    });
    let path = "/_worker/workers/register";
    worker_post_as(stack, reqwest::Method::POST, path, worker, token, body).await
}

#[tokio::test]
async fn worker_tokens_are_bound_to_ids_and_patterns_and_each_shared_token_is_capped() {
    let mut stack = Stack::new();
    let workers_toml = stack.dir.path().join("workers.toml");
    // avtomatika's workers.toml shape: exact ids and fnmatch patterns.
    std::fs::write(
        &workers_toml,
        "[w-own]\ntoken = \"own-token\"\n\n[\"pattern:gpu-*\"]\ntoken = \"gpu-token\"\n",
    )
    .unwrap();
    let config = "max_workers_per_token = 2\nmax_worker_ttl_seconds = 20\n";
    stack.start_configured(config, |cmd| {
        cmd.env("WORKERS_CONFIG_PATH", &workers_toml);
    });
    stack.wait_ready().await;
    let none = json!({});
    // The global token cannot take an id that has a token of its own.
    for id in ["w-own", "gpu-1"] {
        let (status, body) = register_with(&stack, id, WORKER_TOKEN, none.clone()).await;
        assert_eq!(status, 403, "{id}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("individual"),
            "{body}"
        );
    }
    // (id, token, expected): own tokens, a pattern's (at most 2 ids), the
    // global one; registering again as an id it has is fine.
    for (id, token, expected) in [
        ("w-own", "own-token", 200),
        ("gpu-1", "gpu-token", 200),
        ("gpu-2", "gpu-token", 200),
        ("gpu-3", "gpu-token", 429),
        ("cpu-1", "gpu-token", 403),
        ("gpu-2", "gpu-token", 200),
        ("any-1", WORKER_TOKEN, 200),
    ] {
        let (status, body) = register_with(&stack, id, token, none.clone()).await;
        assert_eq!(status, expected, "{id}: {body}");
        if status == 429 {
            let error = body["error"].as_str().unwrap();
            assert!(error.contains("max_workers_per_token = 2"), "{body}");
        }
    }
    let long = json!({"heartbeat_interval_seconds": 86400});
    assert_eq!(
        register_with(&stack, "any-2", WORKER_TOKEN, long).await.0,
        200
    );
    assert_eq!(
        register_with(&stack, "any-3", WORKER_TOKEN, none.clone())
            .await
            .0,
        429
    );
    let (log, _) = stack.logs();
    assert!(
        log.contains("worker any-2 declares a heartbeat interval")
            && log.contains("max_worker_ttl_seconds"),
        "{log}"
    );
    // Its declared day is cut to 20 s: gone after 20 s without a heartbeat.
    wait_until("any-2 to be dropped", Duration::from_secs(40), || async {
        stack.worker_view("any-2").await.is_none()
    })
    .await;
    stack.assert_no_panic();
}

/// Creates a test-flow job as `token`: the status and Retry-After.
async fn create_as(stack: &Stack, token: &str) -> (u16, Option<String>, Value) {
    let resp = stack
        .http
        .post(format!("{}/api/v1/jobs/test", stack.base))
        .header("X-Client-Token", token)
        .json(&json!({"message": "m", "multiply": 1}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry, resp.json().await.unwrap_or(Value::Null))
}

async fn bounded_client_checks(stack: &Stack) {
    // No worker: jobs stay active. Three for this client, then 429.
    for _ in 0..3 {
        assert_eq!(create_as(stack, CLIENT_TOKEN).await.0, 202);
    }
    let (status, retry, body) = create_as(stack, CLIENT_TOKEN).await;
    assert_eq!(status, 429, "{body}");
    assert!(retry.is_some(), "Retry-After");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("max_active_jobs_per_client"),
        "{body}"
    );
    // Another client is not held up by this one.
    assert_eq!(create_as(stack, "other-client-token").await.0, 202);
}

#[tokio::test]
async fn one_client_cannot_hold_every_job_slot_or_stream() {
    let config =
        "max_active_jobs_per_client = 3\n[clients.other]\ntoken = \"other-client-token\"\n";
    let stack = orchestrator_with(config).await;
    bounded_client_checks(&stack).await;
    // Update streams: 16 per client, then 429; another client still gets one.
    let open = |token: &'static str| {
        stack
            .http
            .get(format!("{}/api/v1/jobs/stream", stack.base))
            .header("X-Client-Token", token)
            .send()
    };
    let mut streams = Vec::new();
    for _ in 0..16 {
        let resp = open(CLIENT_TOKEN).await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        streams.push(resp);
    }
    let refused = open(CLIENT_TOKEN).await.unwrap();
    assert_eq!(refused.status().as_u16(), 429);
    assert!(refused.headers().get("retry-after").is_some());
    assert_eq!(
        open("other-client-token").await.unwrap().status().as_u16(),
        200
    );
    // A stream closed gives its slot back.
    streams.pop();
    wait_until("a stream slot back", Duration::from_secs(10), || async {
        open(CLIENT_TOKEN).await.unwrap().status().as_u16() == 200
    })
    .await;
    stack.assert_no_panic();
}

#[tokio::test]
async fn the_active_job_bound_holds_on_postgresql_too() {
    let mut stack = Stack::on_postgres().await;
    stack.start_configured(
        "max_active_jobs_per_client = 3\n[clients.other]\ntoken = \"other-client-token\"\n",
        |_| {},
    );
    stack.wait_ready().await;
    bounded_client_checks(&stack).await;
    stack.assert_no_panic();
}

/// A receiver that accepts connections and never answers.
async fn silent_receiver() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    port
}

#[tokio::test]
async fn one_clients_slow_webhook_receiver_does_not_delay_another_clients_webhooks() {
    let slow = silent_receiver().await;
    let fast = free_port();
    let got = webhook_receiver(fast).await;
    let mut stack = Stack::new();
    stack.start_configured(
        "webhook_allowed_hosts = [\"127.0.0.1\", \"localhost\"]\nmax_concurrent_webhooks = 8\nmax_webhooks_per_client = 2\nmax_webhooks_per_host = 4\n[clients.other]\ntoken = \"other-client-token\"\n",
        |_| {},
    );
    stack.wait_ready().await;
    stack.start_worker();
    stack.wait_worker().await;
    let create = |token: &'static str, url: String| {
        let stack = &stack;
        async move {
            let resp = stack
                .http
                .post(format!("{}/api/v1/jobs/test", stack.base))
                .header("X-Client-Token", token)
                .json(&json!({"initial_data": {"message": "m", "multiply": 1}, "webhook_url": url}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 202);
            let v: Value = resp.json().await.unwrap();
            v["job_id"].as_str().unwrap().to_string()
        }
    };
    // Client one: 12 jobs whose receiver never answers (each try holds its
    // place for the 10 s attempt bound).
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(create(CLIENT_TOKEN, format!("http://127.0.0.1:{slow}/hook")).await);
    }
    for id in &ids {
        stack.finished(id).await;
    }
    // Client two's webhook, to another host (`localhost`), is not held up.
    let started = Instant::now();
    create(
        "other-client-token",
        format!("http://localhost:{fast}/hook"),
    )
    .await;
    wait_until("client two's webhook", Duration::from_secs(8), || async {
        !got.lock().unwrap().is_empty()
    })
    .await;
    eprintln!(
        "client two's webhook delivered {:?} after its job was created",
        started.elapsed()
    );
    // Client one holds at most its 2 places meanwhile.
    let (log, _) = stack.logs();
    assert!(!log.contains("panicked"), "{log}");
}

/// `component` with a custom section of `extra` bytes appended (still a
/// valid component, `extra` bytes larger).
fn padded(component: &[u8], extra: usize) -> Vec<u8> {
    let name = b"padding";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.resize(payload.len() + extra, 0x5a);
    let mut out = component.to_vec();
    out.push(0);
    let mut n = payload.len();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(&payload);
    out
}

#[tokio::test]
async fn parallel_plugin_downloads_are_streamed_capped_and_leave_the_job_writer_free() {
    downloads_are_streamed_and_capped(Stack::new()).await;
}

#[tokio::test]
async fn parallel_plugin_downloads_are_streamed_and_capped_on_postgresql_too() {
    downloads_are_streamed_and_capped(Stack::on_postgres().await).await;
}

/// 40 parallel downloads of a 24 MiB component while a client creates jobs:
/// memory stays bounded, every copy is whole, creates are not held up.
async fn downloads_are_streamed_and_capped(mut stack: Stack) {
    stack.start_orchestrator();
    stack.wait_ready().await;
    let echo = std::fs::read(plugin_fixtures::ECHO_TASK).unwrap();
    let big = padded(&echo, 24 << 20);
    let (status, answer) = upload(&stack, DEPLOY_TOKEN, "echo_task", &big).await;
    assert_eq!(status, 201, "{answer}");
    let sha = answer["sha256"].as_str().unwrap().to_string();
    assert_eq!(sha, rxon::deploy::sha256_hex(&big));
    let pid = stack.orchestrator.as_ref().unwrap().pid().unwrap();
    let rss = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let before = rss();
    // 40 workers download it at once (24 MiB each: ~1 GB were each held
    // whole) while a client creates jobs.
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampling = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                let now = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find(|l| l.starts_with("VmRSS:"))
                            .and_then(|l| l.split_whitespace().nth(1))
                            .and_then(|v| v.parse().ok())
                    })
                    .unwrap_or(0);
                peak.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let downloads = futures_util::future::join_all((0..40).map(|_| {
        let (http, url) = (
            stack.http.clone(),
            format!("{}/_worker/plugins/{sha}", stack.base),
        );
        async move {
            loop {
                let resp = http
                    .get(&url)
                    .header("X-Worker-Token", WORKER_TOKEN)
                    .header("X-Worker-Id", "downloader")
                    .send()
                    .await
                    .unwrap();
                match resp.status().as_u16() {
                    200 => return resp.bytes().await.unwrap(),
                    503 => {
                        assert!(resp.headers().get("retry-after").is_some());
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    other => panic!("download answered {other}"),
                }
            }
        }
    }));
    let creating = async {
        let mut slowest = Duration::ZERO;
        for n in 0..30 {
            let started = Instant::now();
            assert!(try_create_echo(&stack.http, &stack.base, n).await.is_some());
            slowest = slowest.max(started.elapsed());
        }
        slowest
    };
    let (bodies, slowest) = tokio::join!(downloads, creating);
    sampling.abort();
    for body in &bodies {
        assert_eq!(
            rxon::deploy::sha256_hex(body),
            sha,
            "a download came out different"
        );
    }
    let grew_mib = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(before)
        / 1024;
    eprintln!(
        "40 downloads of 24 MiB: orchestrator memory grew {grew_mib} MiB at most; slowest create {slowest:?}"
    );
    assert!(grew_mib < 200, "memory grew {grew_mib} MiB");
    assert!(
        slowest < Duration::from_secs(3),
        "a create waited {slowest:?}"
    );
    stack.assert_no_panic();
}

#[tokio::test]
async fn a_plugin_is_matched_by_its_hash_old_components_are_deleted_and_the_puller_rests() {
    let mut stack = Stack::new();
    stack.start().await;
    let worker_log = stack.worker.as_ref().unwrap().log.clone();
    let log_has = |n: usize, what: &'static str| {
        let log = std::fs::read_to_string(&worker_log).unwrap_or_default();
        async move { log.matches(what).count() >= n }
    };
    let echo = std::fs::read(plugin_fixtures::ECHO_TASK).unwrap();
    let (status, first) = upload(&stack, DEPLOY_TOKEN, "echo_task", &echo).await;
    assert_eq!(status, 201, "{first}");
    let in_service = "deployed plugin echo_task v1 in service";
    wait_until("v1 in service", Duration::from_secs(30), || {
        log_has(1, in_service)
    })
    .await;
    let cache = stack.dir.path().join("cache").join("components");
    let sha1 = first["sha256"].as_str().unwrap().to_string();
    assert!(cache.join(format!("{sha1}.wasm")).exists());
    // The registry is reset (a new database): the same name and version
    // number, other code.
    stack.orchestrator.as_mut().unwrap().stop();
    std::fs::remove_file(stack.dir.path().join("orchestrator.db")).unwrap();
    let _ = std::fs::remove_file(stack.dir.path().join("orchestrator.db-wal"));
    let _ = std::fs::remove_file(stack.dir.path().join("orchestrator.db-shm"));
    stack.start_orchestrator();
    stack.wait_ready().await;
    let other = padded(&echo, 1024);
    let (status, second) = upload(&stack, DEPLOY_TOKEN, "echo_task", &other).await;
    assert_eq!(status, 201, "{second}");
    assert_eq!(second["version"], 1);
    let sha2 = second["sha256"].as_str().unwrap().to_string();
    assert_ne!(sha1, sha2);
    wait_until("the new v1 in service", Duration::from_secs(30), || {
        log_has(2, in_service)
    })
    .await;
    // The old component is deleted from the cache, the new one kept.
    wait_until(
        "the old component deleted",
        Duration::from_secs(10),
        || async { !cache.join(format!("{sha1}.wasm")).exists() },
    )
    .await;
    assert!(cache.join(format!("{sha2}.wasm")).exists());
    // Nothing changes now: the puller does not pull again and again.
    let pulls = stack.logs().1.matches("; pulling").count();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let more = stack.logs().1.matches("; pulling").count() - pulls;
    assert!(more <= 1, "{more} pulls in 3 s with nothing new");
    let id = stack.create("/jobs/test", echo_body("again", 2)).await;
    assert_eq!(stack.finished(&id).await["status"], "finished");
    stack.assert_no_panic();
}

#[tokio::test]
async fn a_half_copied_plugin_file_does_not_drop_the_skills_it_serves() {
    let mut stack = Stack::new();
    stack.add_plugin(plugin_fixtures::CHAOS_TASK);
    stack.start().await;
    let offers_sleep = || async {
        stack.worker_view(WORKER_ID).await.is_some_and(|w| {
            w["supported_skills"]
                .as_array()
                .is_some_and(|s| s.iter().any(|x| x == "sleep"))
        })
    };
    wait_until(
        "chaos skills offered",
        Duration::from_secs(30),
        offers_sleep,
    )
    .await;
    // A copy of a new version caught half way.
    let chaos = std::fs::read(plugin_fixtures::CHAOS_TASK).unwrap();
    let target = stack.dir.path().join("plugins").join("chaos_task.wasm");
    std::fs::write(&target, &chaos[..chaos.len() / 2]).unwrap();
    let worker_log = stack.worker.as_ref().unwrap().log.clone();
    wait_until("the reload", Duration::from_secs(30), || async {
        std::fs::read_to_string(&worker_log)
            .unwrap_or_default()
            .contains("stays in service")
    })
    .await;
    // Re-registered after the reload, and still offering the skills.
    stack.wait_heartbeat(WORKER_ID).await;
    assert!(offers_sleep().await, "the chaos skills were dropped");
    let id = stack.create("/jobs/test", echo_body("still", 1)).await;
    assert_eq!(stack.finished(&id).await["status"], "finished");
    stack.assert_no_panic();
}
