//! Jobs' files: a real S3-compatible server (`s3s-fs`, signatures checked)
//! and the local-directory default. Uploads streamed through the
//! orchestrator and by presigned URL, listings, downloads, the owner
//! check, the size limit, and the files' removal after their job ends.

use std::time::Duration;

use serde_json::{Value, json};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::s3::{BUCKET, S3Server};
use crate::support::*;

const FILES_FLOW: &str = r#"
name = "files_flow"
api_endpoint = "/jobs/files"
api_version = "v1"
[states.start]
start = true
wait.on = { go = "done" }
[states.done]
end = "finished"
"#;

const OTHER_TOKEN: &str = "other-client-token";
const LIMIT: usize = 32 << 20;

/// Another client, a 32 MiB limit, files removed at once after their job
/// ends (swept every 0.2 s).
fn config() -> String {
    format!(
        "[clients.other]\ntoken = \"{OTHER_TOKEN}\"\n\n[objects]\nmax_upload_bytes = {LIMIT}\nretention = \"0s\"\nsweep_seconds = 0.2\n"
    )
}

/// `n` bytes that do not repeat (xorshift).
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// A body sent in 64 KiB chunks, without a length (chunked encoding).
fn chunked(data: &[u8]) -> reqwest::Body {
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = data
        .chunks(64 << 10)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

/// `url` with the first hex digit of its `name` parameter changed (a
/// well-formed, wrong signature).
fn flip_signature(url: &str, name: &str) -> String {
    let at = url.find(name).unwrap() + name.len();
    let flipped = if &url[at..at + 1] == "0" { "1" } else { "0" };
    format!("{}{flipped}{}", &url[..at], &url[at + 1..])
}

fn sha(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

async fn start(stack: &mut Stack, env: Vec<(&'static str, String)>) {
    stack.add_blueprint("files_flow", FILES_FLOW);
    stack.start_configured(&config(), |cmd| {
        cmd.envs(env);
    });
    stack.wait_ready().await;
}

async fn put(stack: &Stack, url: &str, token: Option<&str>, body: reqwest::Body) -> (u16, Value) {
    let mut request = stack.http.put(url).body(body);
    if let Some(token) = token {
        request = request.header("X-Client-Token", token);
    }
    let resp = request.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The status line's code of a PUT that declares `length` bytes and sends
/// none (the orchestrator must answer before reading the body).
async fn declared_put(stack: &Stack, path: &str, length: usize) -> (u16, String) {
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", stack.port))
        .await
        .unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Client-Token: {CLIENT_TOKEN}\r\nContent-Length: {length}\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut answer))
        .await
        .expect("an answer before the body")
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

async fn names(stack: &Stack, id: &str) -> Vec<(String, u64)> {
    let (status, listed) = stack.get(&format!("/api/v1/jobs/{id}/files")).await;
    assert_eq!(status, 200, "{listed}");
    let mut names: Vec<(String, u64)> = listed["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_string(),
                f["size"].as_u64().unwrap(),
            )
        })
        .collect();
    names.sort();
    names
}

/// What every store must do for the owner, for others and past the limit.
async fn owner_other_and_limit(stack: &Stack, id: &str) {
    let files = format!("{}/api/v1/jobs/{id}/files", stack.base);
    // Another client sees no such job, whatever the route.
    for path in ["", "/upload?filename=a.txt", "/download/in/data.bin"] {
        let (status, body) = stack
            .get_as(&format!("/api/v1/jobs/{id}/files{path}"), OTHER_TOKEN)
            .await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error"], "Job not found");
    }
    let (status, _) = put(
        stack,
        &format!("{files}/content/x.bin"),
        Some(OTHER_TOKEN),
        "x".into(),
    )
    .await;
    assert_eq!(status, 404);
    // A length declared over the limit is refused before a byte is read.
    let (code, text) = declared_put(
        stack,
        &format!("/api/v1/jobs/{id}/files/content/big.bin"),
        LIMIT + 1,
    )
    .await;
    assert_eq!(code, 413, "{text}");
    assert!(text.contains("max_upload_bytes"), "{text}");
    // A streamed body that crosses it is cut off, and nothing is kept.
    let over = bytes(LIMIT + (64 << 10), 3);
    let (status, body) = put(
        stack,
        &format!("{files}/content/big.bin"),
        Some(CLIENT_TOKEN),
        chunked(&over),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(
        body["error"],
        format!("the file is larger than max_upload_bytes ({LIMIT} bytes)")
    );
    // Names are plain relative paths.
    let (status, body) = put(
        stack,
        &format!("{files}/content/a%20b"),
        Some(CLIENT_TOKEN),
        "x".into(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("may hold only"),
        "{body}"
    );
    let (status, body) = stack
        .get(&format!(
            "/api/v1/jobs/{id}/files/upload?filename=x&expires_in=0"
        ))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("expires_in"),
        "{body}"
    );
}

/// Ends the job; its files must be gone soon after (retention 0 s).
async fn end_and_swept(stack: &Stack, id: &str, on_disk: &std::path::Path) {
    let resp = stack
        .http
        .post(format!("{}/api/v1/jobs/{id}/signal/go", stack.base))
        .header("X-Client-Token", CLIENT_TOKEN)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(stack.finished(id).await["status"], "finished");
    wait_until(
        "the ended job's files to go",
        Duration::from_secs(20),
        || async { names(stack, id).await.is_empty() && !on_disk.exists() },
    )
    .await;
    let (status, body) = put(
        stack,
        &format!("{}/api/v1/jobs/{id}/files/content/late.txt", stack.base),
        Some(CLIENT_TOKEN),
        "late".into(),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        stack
            .logs()
            .0
            .contains(&format!("job {id}: 2 files deleted")),
        "the sweep says what it deleted"
    );
}

#[tokio::test]
async fn files_go_through_a_real_s3_service_and_leave_with_their_job() {
    let s3 = S3Server::start().await;
    let mut stack = Stack::new();
    start(&mut stack, s3.env()).await;
    let id = stack.create("/jobs/files", json!({})).await;
    let files = format!("{}/api/v1/jobs/{id}/files", stack.base);

    // Streamed through the orchestrator into the service.
    let data = bytes(20 << 20, 1);
    let (status, stored) = put(
        &stack,
        &format!("{files}/content/in/data.bin"),
        Some(CLIENT_TOKEN),
        chunked(&data),
    )
    .await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["status"], "uploaded");
    assert_eq!(
        stored["s3_uri"],
        format!("s3://{BUCKET}/jobs/{id}/in/data.bin")
    );
    assert_eq!(stored["size"], 20 << 20);
    let on_disk = s3.file(&format!("jobs/{id}/in/data.bin"));
    assert_eq!(sha(&std::fs::read(&on_disk).unwrap()), sha(&data));

    // A presigned URL of the service itself: no client token, and the
    // service checks its signature.
    let (status, grant) = stack
        .get(&format!(
            "/api/v1/jobs/{id}/files/upload?filename=notes.txt&expires_in=120"
        ))
        .await;
    assert_eq!(status, 200, "{grant}");
    assert_eq!(grant["method"], "PUT");
    assert_eq!(grant["expires_in"], 120);
    let url = grant["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{}/{BUCKET}/jobs/{id}/notes.txt?", s3.endpoint)),
        "{url}"
    );
    let tampered = flip_signature(url, "X-Amz-Signature=");
    let resp = stack
        .http
        .put(&tampered)
        .body("forged")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        403,
        "the service refuses a wrong signature"
    );
    let resp = stack
        .http
        .put(url)
        .body("hello notes")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        200,
        "{}",
        resp.text().await.unwrap()
    );
    assert_eq!(
        names(&stack, &id).await,
        [
            ("in/data.bin".to_string(), 20 << 20),
            ("notes.txt".to_string(), 11)
        ]
    );

    // A download is a redirect to a short-lived presigned URL.
    let direct = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = direct
        .get(format!("{files}/download/in/data.bin"))
        .header("X-Client-Token", CLIENT_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 302);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&s3.endpoint), "{location}");
    let got = stack
        .http
        .get(&location)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha(&got), sha(&data));
    let (status, body) = stack
        .get(&format!("/api/v1/jobs/{id}/files/download/missing.bin"))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("File not found"))
    );

    owner_other_and_limit(&stack, &id).await;
    assert!(!s3.file(&format!("jobs/{id}/big.bin")).exists());
    assert_eq!(names(&stack, &id).await.len(), 2);
    end_and_swept(&stack, &id, &on_disk).await;
}

#[tokio::test]
async fn without_a_service_files_live_in_a_local_directory() {
    let mut stack = Stack::new();
    let dir = stack.dir.path().join("objects");
    start(&mut stack, vec![("OBJECTS_DIR", dir.display().to_string())]).await;
    let id = stack.create("/jobs/files", json!({})).await;
    let files = format!("{}/api/v1/jobs/{id}/files", stack.base);

    let data = bytes(30 << 20, 2);
    let (status, stored) = put(
        &stack,
        &format!("{files}/content/in/data.bin"),
        Some(CLIENT_TOKEN),
        chunked(&data),
    )
    .await;
    assert_eq!(status, 200, "{stored}");
    let on_disk = dir.join(format!("jobs/{id}/in/data.bin"));
    assert!(std::fs::read(&on_disk).unwrap() == data, "the file as sent");

    // The orchestrator signs its own upload URL: bound to the method, the
    // key and the expiry.
    let (status, grant) = stack
        .get(&format!(
            "/api/v1/jobs/{id}/files/upload?filename=notes.txt"
        ))
        .await;
    assert_eq!(status, 200, "{grant}");
    assert_eq!(grant["expires_in"], 3600);
    let url = grant["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!(
            "{}/_public/files/jobs/{id}/notes.txt?expires=",
            stack.base
        )),
        "{url}"
    );
    let tampered = flip_signature(url, "signature=");
    let (status, body) = put(&stack, &tampered, None, "forged".into()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("the file URL's signature does not match"))
    );
    let other_key = url.replace("notes.txt", "other.txt");
    assert_eq!(put(&stack, &other_key, None, "forged".into()).await.0, 403);
    let (status, _) = stack.get_as(url.trim_start_matches(&stack.base), "").await;
    assert_eq!(status, 403, "a PUT URL does not read");
    let (status, body) = put(&stack, url, None, "hello notes".into()).await;
    assert_eq!(status, 200, "{body}");

    // Downloads stream from the orchestrator.
    let resp = stack
        .http
        .get(format!("{files}/download/notes.txt"))
        .header("X-Client-Token", CLIENT_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-length"], "11");
    assert_eq!(resp.text().await.unwrap(), "hello notes");
    assert_eq!(
        names(&stack, &id).await,
        [
            ("in/data.bin".to_string(), 30 << 20),
            ("notes.txt".to_string(), 11)
        ]
    );

    owner_other_and_limit(&stack, &id).await;
    assert!(!dir.join(format!("jobs/{id}/big.bin")).exists());
    end_and_swept(&stack, &id, &on_disk).await;
}

#[tokio::test]
async fn a_large_upload_streams_in_bounded_memory() {
    let mut stack = Stack::new();
    let dir = stack.dir.path().join("objects");
    stack.add_blueprint("files_flow", FILES_FLOW);
    stack.start_orchestrator_with(|cmd| {
        cmd.env("OBJECTS_DIR", &dir);
    });
    stack.wait_ready().await;
    let id = stack.create("/jobs/files", json!({})).await;
    let pid = stack.orchestrator.as_ref().unwrap().pid().unwrap();
    let idle = rss_kib(pid).unwrap();
    // 200 MiB, generated as it is sent; the orchestrator's RSS is sampled
    // throughout.
    let size: usize = 200 << 20;
    let chunks = (0..size / (1 << 20))
        .map(|i| Ok::<_, std::io::Error>(bytes::Bytes::from(bytes(1 << 20, i as u64 + 7))));
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(idle));
    let sampler = sample_rss(pid, peak.clone());
    let (status, stored) = put(
        &stack,
        &format!("{}/api/v1/jobs/{id}/files/content/big.bin", stack.base),
        Some(CLIENT_TOKEN),
        body,
    )
    .await;
    sampler.abort();
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["size"], size);
    assert_eq!(
        std::fs::metadata(dir.join(format!("jobs/{id}/big.bin")))
            .unwrap()
            .len(),
        size as u64
    );
    let grew = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(idle);
    assert!(
        grew < 100 << 10,
        "the orchestrator's RSS grew by {grew} KiB for a 200 MiB upload"
    );
}

const SHA_FLOW: &str = r#"
name = "sha_flow"
api_endpoint = "/jobs/sha"
api_version = "v1"
[states.start]
start = true
wait.on = { go = "hash" }
[states.hash]
dispatch.task = "sha256_file"
dispatch.params.input = "results.start.input"
dispatch.params.derived_bytes = "results.start.derived_bytes | default(0)"
dispatch.on = { success = "done", failure = "failed" }
[states.done]
end = "finished"
[states.failed]
end = "failed"
"#;

/// The RSS of `pid` in KiB, sampled every 20 ms into `peak` until aborted.
fn sample_rss(
    pid: u32,
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Some(kib) = rss_kib(pid) {
                peak.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Sends the job the signal `go` with `body` (its state's result).
async fn go(stack: &Stack, id: &str, body: Value) {
    let resp = stack
        .http
        .post(format!("{}/api/v1/jobs/{id}/signal/go", stack.base))
        .header("X-Client-Token", CLIENT_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// The acceptance run: a client uploads 200 MiB; a Rust plugin hashes it
/// as it streams through the worker host and writes a 50 MiB derived file;
/// the result names it; the client downloads it; neither process holds the
/// file. Then the bounds: another job's file and a plugin without the
/// grant are refused; the files go when the job has ended.
#[tokio::test]
async fn a_plugin_streams_a_job_file_and_writes_a_derived_one() {
    let s3 = S3Server::start().await;
    let mut stack = Stack::new();
    stack.add_blueprint("sha_flow", SHA_FLOW);
    stack.add_plugin(plugin_fixtures::SHA256_TASK);
    std::fs::write(
        stack.dir.path().join("plugins/sha256_task.toml"),
        "[objects]\nread = true\nwrite = true\n",
    )
    .unwrap();
    let env = s3.env();
    stack.start_configured(
        "[objects]\nretention = \"5s\"\nsweep_seconds = 0.2\n",
        |cmd| {
            cmd.envs(env.clone());
        },
    );
    stack.wait_ready().await;
    stack.worker = Some(stack.spawn_worker(WORKER_ID, "worker.log", |cmd| {
        cmd.envs(env.clone());
    }));
    stack.wait_worker().await;
    let orchestrator_pid = stack.orchestrator.as_ref().unwrap().pid().unwrap();
    let worker_pid = stack.worker.as_ref().unwrap().pid().unwrap();
    let idle = (
        rss_kib(orchestrator_pid).unwrap(),
        rss_kib(worker_pid).unwrap(),
    );
    let peaks = (
        std::sync::Arc::new(std::sync::atomic::AtomicU64::new(idle.0)),
        std::sync::Arc::new(std::sync::atomic::AtomicU64::new(idle.1)),
    );
    let samplers = [
        sample_rss(orchestrator_pid, peaks.0.clone()),
        sample_rss(worker_pid, peaks.1.clone()),
    ];

    let id = stack.create("/jobs/sha", json!({})).await;
    let data = bytes(200 << 20, 11);
    let (status, stored) = put(
        &stack,
        &format!("{}/api/v1/jobs/{id}/files/content/input.bin", stack.base),
        Some(CLIENT_TOKEN),
        chunked(&data),
    )
    .await;
    assert_eq!(status, 200, "{stored}");
    let derived_bytes: usize = 50 << 20;
    go(
        &stack,
        &id,
        json!({"input": "input.bin", "derived_bytes": derived_bytes}),
    )
    .await;
    let job = stack.finished(&id).await;
    for sampler in samplers {
        sampler.abort();
    }
    assert_eq!(job["status"], "finished", "{job}");
    let hash = &job["results"]["hash"];
    assert_eq!(
        hash["sha256"],
        sha(&data),
        "the plugin read the file as sent"
    );
    assert_eq!(hash["size"], 200 << 20);
    let derived_uri = format!("s3://{BUCKET}/{id}/derived.bin");
    assert_eq!(hash["derived"], derived_uri);
    assert_eq!(job["data_metadata"]["derived"]["uri"], derived_uri, "{job}");
    assert_eq!(job["data_metadata"]["derived"]["size"], derived_bytes);
    let inverted: Vec<u8> = data[..derived_bytes].iter().map(|b| !b).collect();
    let expected = sha(&inverted);
    assert_eq!(hash["derived_sha256"], expected);
    let got = stack
        .http
        .get(format!(
            "{}/api/v1/jobs/{id}/files/download/derived.bin",
            stack.base
        ))
        .header("X-Client-Token", CLIENT_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status().as_u16(), 200);
    assert_eq!(
        sha(&got.bytes().await.unwrap()),
        expected,
        "the client got the plugin's file"
    );
    for (who, idle, peak) in [
        ("orchestrator", idle.0, &peaks.0),
        ("worker host", idle.1, &peaks.1),
    ] {
        let grew = peak
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(idle);
        assert!(
            grew < 100 << 10,
            "the {who}'s RSS grew by {grew} KiB moving 250 MiB"
        );
    }

    // Another job's file is out of reach, by URI or by name.
    let other = stack.create("/jobs/sha", json!({})).await;
    go(
        &stack,
        &other,
        json!({"input": format!("s3://{BUCKET}/jobs/{id}/input.bin")}),
    )
    .await;
    let job = stack.finished(&other).await;
    // A permanent error: the job is quarantined for a human to look at.
    assert_eq!(job["status"], "quarantined", "{job}");
    let message = job["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("refused: the plugin may not read"),
        "{message}"
    );
    let third = stack.create("/jobs/sha", json!({})).await;
    go(&stack, &third, json!({"input": "input.bin"})).await;
    let job = stack.finished(&third).await;
    assert!(
        job["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no such object"),
        "{job}"
    );

    // The same plugin without the grant.
    stack.worker.as_mut().unwrap().stop();
    std::fs::remove_file(stack.dir.path().join("plugins/sha256_task.toml")).unwrap();
    stack.worker = Some(stack.spawn_worker(WORKER_ID, "worker-2.log", |cmd| {
        cmd.envs(env.clone());
    }));
    stack.wait_heartbeat(WORKER_ID).await;
    let denied = stack.create("/jobs/sha", json!({})).await;
    go(&stack, &denied, json!({"input": "input.bin"})).await;
    let job = stack.finished(&denied).await;
    // A permanent error: the job is quarantined for a human to look at.
    assert_eq!(job["status"], "quarantined", "{job}");
    assert!(
        job["error"]["message"]
            .as_str()
            .unwrap()
            .contains("grants no object access"),
        "{job}"
    );

    // The job has ended: its files go.
    wait_until(
        "the ended job's files to go",
        Duration::from_secs(20),
        || async { names(&stack, &id).await.is_empty() },
    )
    .await;
    assert!(!s3.file(&format!("{id}/derived.bin")).exists());
}

/// A file read again (a model every task needs) comes from the worker
/// host's disk the second time: kept by its ETag once read whole.
#[tokio::test]
async fn a_repeated_input_is_read_from_the_worker_cache() {
    let s3 = S3Server::start().await;
    let model = bytes(3 << 20, 5);
    std::fs::create_dir_all(s3.file("models")).unwrap();
    std::fs::write(s3.file("models/m.bin"), &model).unwrap();
    let mut stack = Stack::new();
    stack.add_blueprint("sha_flow", SHA_FLOW);
    stack.add_plugin(plugin_fixtures::SHA256_TASK);
    std::fs::write(
        stack.dir.path().join("plugins/sha256_task.toml"),
        "[objects]\nread_prefixes = [\"models/\"]\n",
    )
    .unwrap();
    let policy = stack.dir.path().join("policy.toml");
    std::fs::write(&policy, "allowed_object_prefixes = [\"models/\"]\n").unwrap();
    let env = s3.env();
    stack.start_configured("", |cmd| {
        cmd.envs(env.clone());
    });
    stack.wait_ready().await;
    stack.worker = Some(stack.spawn_worker(WORKER_ID, "worker.log", |cmd| {
        cmd.envs(env.clone()).env("WORKER_POLICY", &policy);
    }));
    stack.wait_worker().await;
    let uri = format!("s3://{BUCKET}/models/m.bin");
    for round in 0..2 {
        let id = stack.create("/jobs/sha", json!({})).await;
        go(&stack, &id, json!({ "input": uri })).await;
        let job = stack.finished(&id).await;
        assert_eq!(job["status"], "finished", "round {round}: {job}");
        assert_eq!(job["results"]["hash"]["sha256"], sha(&model));
    }
    let log = stack.logs().1;
    assert_eq!(
        log.matches(&format!("object {uri} read from the cache"))
            .count(),
        1,
        "the first read fills the cache, the second uses it"
    );
    let cached: Vec<_> = std::fs::read_dir(stack.dir.path().join("cache/objects"))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .collect();
    assert_eq!(cached, [3 << 20], "one whole copy");
}

/// The same calls from Python (the SDK's `open_object`/`create_object`)
/// and JavaScript (the component's `taskworker:plugin/objects` imports).
#[tokio::test]
async fn python_and_javascript_plugins_stream_objects_too() {
    let s3 = S3Server::start().await;
    let mut stack = Stack::new();
    for (name, task, params) in [
        (
            "py_sha",
            "sha256_file_py",
            "dispatch.params.derived_bytes = 1048576\ndispatch.params.derived_name = \"'derived_py.bin'\"",
        ),
        (
            "js_copy",
            "copy_file_js",
            "dispatch.params.output = \"'copy_js.bin'\"",
        ),
    ] {
        stack.add_blueprint(
            name,
            &format!(
                "name = \"{name}\"\napi_endpoint = \"/jobs/{name}\"\napi_version = \"v1\"\n[states.start]\nstart = true\nwait.on = {{ go = \"work\" }}\n[states.work]\ndispatch.task = \"{task}\"\ndispatch.params.input = \"results.start.input\"\n{params}\ndispatch.on = {{ success = \"done\" }}\n[states.done]\nend = \"finished\"\n"
            ),
        );
    }
    for plugin in ["sha256_task_py", "copy_task_js"] {
        let wasm = crate::languages::lang_plugin(&format!("{plugin}.wasm"));
        stack.add_plugin(wasm.to_str().unwrap());
        std::fs::write(
            stack.dir.path().join(format!("plugins/{plugin}.toml")),
            "[objects]\nread = true\nwrite = true\n",
        )
        .unwrap();
    }
    let env = s3.env();
    stack.start_configured("", |cmd| {
        cmd.envs(env.clone());
    });
    stack.wait_ready().await;
    stack.worker = Some(stack.spawn_worker(WORKER_ID, "worker.log", |cmd| {
        cmd.envs(env.clone());
    }));
    stack.wait_worker().await;
    let data = bytes(3 << 20, 21);

    let id = stack.create("/jobs/py_sha", json!({})).await;
    let files = format!("{}/api/v1/jobs/{id}/files", stack.base);
    let (status, _) = put(
        &stack,
        &format!("{files}/content/in.bin"),
        Some(CLIENT_TOKEN),
        chunked(&data),
    )
    .await;
    assert_eq!(status, 200);
    go(&stack, &id, json!({"input": "in.bin"})).await;
    let job = stack.finished(&id).await;
    assert_eq!(job["status"], "finished", "{job}");
    let work = &job["results"]["work"];
    assert_eq!(work["sha256"], sha(&data));
    assert_eq!(work["size"], 3 << 20);
    let inverted: Vec<u8> = data[..1 << 20].iter().map(|b| !b).collect();
    assert_eq!(work["derived_sha256"], sha(&inverted));
    assert_eq!(
        job["data_metadata"]["derived"]["uri"],
        format!("s3://{BUCKET}/{id}/derived_py.bin")
    );
    assert_eq!(
        std::fs::read(s3.file(&format!("{id}/derived_py.bin"))).unwrap(),
        inverted
    );

    let id = stack.create("/jobs/js_copy", json!({})).await;
    let files = format!("{}/api/v1/jobs/{id}/files", stack.base);
    let (status, _) = put(
        &stack,
        &format!("{files}/content/in.bin"),
        Some(CLIENT_TOKEN),
        chunked(&data),
    )
    .await;
    assert_eq!(status, 200);
    go(&stack, &id, json!({"input": "in.bin"})).await;
    let job = stack.finished(&id).await;
    assert_eq!(job["status"], "finished", "{job}");
    assert_eq!(job["results"]["work"]["size"], 3 << 20);
    assert_eq!(
        job["data_metadata"]["copy"]["uri"],
        format!("s3://{BUCKET}/{id}/copy_js.bin")
    );
    assert!(
        std::fs::read(s3.file(&format!("{id}/copy_js.bin"))).unwrap() == data,
        "the copy as the input"
    );
}
