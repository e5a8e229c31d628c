//! The e2e harness: processes that are always stopped, free ports, HTTP helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub mod browser;
pub mod pg;
pub mod s3;

pub const CLIENT_TOKEN: &str = "test-client-token";
pub const WORKER_TOKEN: &str = "test-worker-token";
pub const DEPLOY_TOKEN: &str = "test-deploy-token";
pub const WORKER_ID: &str = "local-test-worker";

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A binary built by `cargo test --workspace` next to this test (or in
/// `$E2E_BIN_DIR`, to run these tests against other builds, e.g. an older
/// commit's).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = match std::env::var_os("E2E_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf(),
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build --workspace --bins`, or run the whole workspace's tests)",
        path.display()
    );
    path
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped,
/// also when the test fails. Its output goes to a log file.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            name: name.into(),
            child: Some(child),
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for a clean exit (up to 15 s).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // Ask politely first (SIGTERM, by pid), as a user's Ctrl-C would.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Peak resident memory (VmHWM) in KiB, from /proc.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        let log = self.log_text();
        if std::thread::panicking() {
            eprintln!(
                "----- {} log ({}) -----\n{log}",
                self.name,
                self.log.display()
            );
        } else if let Some(at) = log.find(RUST_PANIC) {
            // Whatever the test checked, a panic in one of our processes
            // (a request or a task that took a thread down) fails it.
            let from = log[..at].rfind('\n').map_or(0, |n| n + 1);
            panic!(
                "{} panicked during the test ({}):\n{}",
                self.name,
                self.log.display(),
                &log[from..log.floor_char_boundary(at + 2_000)]
            );
        }
    }
}

/// How a Rust panic begins in a process's output (`thread '…' panicked at`).
const RUST_PANIC: &str = "' panicked at ";

/// An orchestrator and a worker host on free ports, with the repo's
/// blueprints plus `extra_blueprints`, and the echo and failing plugins.
pub struct Stack {
    pub base: String,
    pub port: u16,
    pub orchestrator: Option<Proc>,
    pub worker: Option<Proc>,
    pub http: reqwest::Client,
    /// `--storage` of the orchestrator: a SQLite file in `dir` unless
    /// [`Stack::on_postgres`] gave it a database.
    pub storage: String,
    /// Dropped after the processes (fields drop in order).
    pub database: Option<pg::TestDatabase>,
    /// Last: the processes' logs are printed from it when a test fails.
    pub dir: tempfile::TempDir,
}

pub const GHOST_FLOW: &str = r#"
name = "ghost_flow"
api_endpoint = "/jobs/ghost"
api_version = "v1"
[states.start]
start = true
dispatch.task = "no_such_task"
dispatch.on = { success = "done" }
[states.done]
end = "finished"
"#;

/// Uses a skill of `chaos_task`, which the stack does not deploy at first.
pub const HOT_FLOW: &str = r#"
name = "hot_flow"
api_endpoint = "/jobs/hot"
api_version = "v1"
[states.start]
start = true
dispatch.task = "custom_status"
dispatch.params.doc = "initial.doc"
dispatch.on = { needs_review = "review" }
[states.review]
end = "finished"
"#;

/// An orchestrator (no worker) with extra config-file lines.
pub async fn orchestrator_with(config: &str) -> Stack {
    let mut stack = Stack::new();
    stack.start_configured(config, |_| {});
    stack.wait_ready().await;
    stack
}

impl Stack {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let blueprints = dir.path().join("blueprints");
        std::fs::create_dir(&blueprints).unwrap();
        for entry in std::fs::read_dir(repo().join("blueprints")).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, blueprints.join(path.file_name().unwrap())).unwrap();
        }
        std::fs::write(blueprints.join("ghost_flow.toml"), GHOST_FLOW).unwrap();
        std::fs::write(blueprints.join("hot_flow.toml"), HOT_FLOW).unwrap();
        let plugins = dir.path().join("plugins");
        std::fs::create_dir(&plugins).unwrap();
        for p in [plugin_fixtures::ECHO_TASK, plugin_fixtures::FAILING_TASK] {
            std::fs::copy(p, plugins.join(Path::new(p).file_name().unwrap())).unwrap();
        }
        let port = free_port();
        Self {
            base: format!("http://127.0.0.1:{port}"),
            port,
            storage: format!("sqlite:{}", dir.path().join("orchestrator.db").display()),
            database: None,
            dir,
            orchestrator: None,
            worker: None,
            http: reqwest::Client::new(),
        }
    }

    /// The same stack on a PostgreSQL database of its own.
    pub async fn on_postgres() -> Self {
        let mut stack = Self::new();
        let db = pg::TestDatabase::create().await;
        stack.storage = db.url.clone();
        stack.database = Some(db);
        stack
    }

    pub fn start_orchestrator(&mut self) {
        self.start_orchestrator_with(|_| {});
    }

    /// Starts the orchestrator with `config` as its config file, adjusted
    /// by `configure`.
    pub fn start_configured(&mut self, config: &str, configure: impl FnOnce(&mut Command)) {
        let path = self.dir.path().join("orchestrator.toml");
        std::fs::write(&path, config).unwrap();
        self.start_orchestrator_with(|cmd| {
            cmd.arg("--config").arg(&path);
            configure(cmd);
        });
    }

    pub fn start_orchestrator_with(&mut self, configure: impl FnOnce(&mut Command)) {
        let mut cmd = Command::new(binary("orchestrator"));
        cmd.args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--storage")
            .arg(&self.storage)
            .arg("--blueprints-dir")
            .arg(self.dir.path().join("blueprints"))
            .env("CLIENT_TOKEN", CLIENT_TOKEN)
            .env("DEPLOY_TOKEN", DEPLOY_TOKEN)
            .env("GLOBAL_WORKER_TOKEN", WORKER_TOKEN)
            .env("RUST_LOG", "info");
        configure(&mut cmd);
        let n = std::fs::read_dir(self.dir.path()).unwrap().count();
        self.orchestrator = Some(Proc::spawn(
            "orchestrator",
            cmd,
            self.dir.path().join(format!("orchestrator-{n}.log")),
        ));
    }

    pub fn start_worker(&mut self) {
        self.worker = Some(self.spawn_worker(WORKER_ID, "worker.log", |_| {}));
    }

    /// A worker host process with the stack's settings (`WORKER_ID`
    /// `worker_id`, 1 s heartbeats, 5 slots, the stack's plugins directory),
    /// adjusted by `configure`.
    pub fn spawn_worker(
        &self,
        worker_id: &str,
        log_name: &str,
        configure: impl FnOnce(&mut Command),
    ) -> Proc {
        let plugins = self.dir.path().join("plugins");
        self.spawn_worker_on(worker_id, log_name, &plugins, configure)
    }

    /// [`Stack::spawn_worker`] with a plugins directory of its own.
    pub fn spawn_worker_on(
        &self,
        worker_id: &str,
        log_name: &str,
        plugins: &Path,
        configure: impl FnOnce(&mut Command),
    ) -> Proc {
        let mut cmd = Command::new(binary("worker-host"));
        cmd.env(
            "ORCHESTRATOR_URL",
            format!("http://localhost:{}", self.port),
        )
        .env("WORKER_ID", worker_id)
        .env("WORKER_TOKEN", WORKER_TOKEN)
        .env("RUST_LOG", "info")
        // Settings by environment, so `configure` can override them with flags.
        .env("MAX_CONCURRENT_TASKS", "5")
        .env("HEARTBEAT_INTERVAL", "1")
        // Compiled code and deployed components of this stack only.
        .env("WORKER_CACHE_DIR", self.dir.path().join("cache"))
        .args(["--worker-type", "test-worker"])
        .arg("--plugins-dir")
        .arg(plugins);
        configure(&mut cmd);
        Proc::spawn("worker-host", cmd, self.dir.path().join(log_name))
    }

    /// Adds a blueprint file before the orchestrator starts.
    pub fn add_blueprint(&self, name: &str, toml: &str) {
        std::fs::write(
            self.dir
                .path()
                .join("blueprints")
                .join(format!("{name}.toml")),
            toml,
        )
        .unwrap();
    }

    /// Copies a plugin component into the stack's plugins directory.
    pub fn add_plugin(&self, path: &str) {
        let path = Path::new(path);
        std::fs::copy(
            path,
            self.dir
                .path()
                .join("plugins")
                .join(path.file_name().unwrap()),
        )
        .unwrap();
    }

    /// A job created with `{"initial_data": data, ...options}`: status and body.
    pub async fn try_create(&self, endpoint: &str, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}/api/v1{endpoint}", self.base))
            .header("X-Client-Token", CLIENT_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// The worker as `GET /api/v1/workers` lists it.
    pub async fn worker_view(&self, worker_id: &str) -> Option<Value> {
        let (_, workers) = self.get("/api/v1/workers").await;
        workers
            .as_array()?
            .iter()
            .find(|w| w["worker_id"] == worker_id)
            .cloned()
    }

    /// Waits until `worker_id` heartbeats again (its `last_heartbeat_at` moves).
    pub async fn wait_heartbeat(&self, worker_id: &str) {
        let before = self
            .worker_view(worker_id)
            .await
            .map(|w| w["last_heartbeat_at"].clone());
        wait_until("a fresh heartbeat", Duration::from_secs(20), || async {
            let now = self
                .worker_view(worker_id)
                .await
                .map(|w| w["last_heartbeat_at"].clone());
            now.is_some() && now != before
        })
        .await;
    }

    /// Orchestrator up and the worker registered.
    pub async fn start(&mut self) {
        self.start_orchestrator();
        self.wait_ready().await;
        self.start_worker();
        self.wait_worker().await;
    }

    pub async fn wait_ready(&self) {
        wait_listening(&self.http, &self.base, Duration::from_secs(30)).await;
    }

    pub async fn wait_worker(&self) {
        wait_until(
            "the worker to register",
            Duration::from_secs(60),
            || async {
                let (status, v) = self.get("/api/v1/workers").await;
                status == 200
                    && v.as_array()
                        .is_some_and(|a| a.iter().any(|w| w["worker_id"] == WORKER_ID))
            },
        )
        .await;
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.get_as(path, CLIENT_TOKEN).await
    }

    /// `GET path` as the client of `token`.
    pub async fn get_as(&self, path: &str, token: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .header("X-Client-Token", token)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Creates a job with the scenario's header and flat body.
    pub async fn create(&self, endpoint: &str, body: Value) -> String {
        let resp = self
            .http
            .post(format!("{}/api/v1{endpoint}", self.base))
            .header("Content-Type", "application/json")
            .header("X-Avtomatika-Token", CLIENT_TOKEN)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 202);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["status"], "accepted");
        v["job_id"].as_str().unwrap().to_string()
    }

    /// Waits (server-side) until the job ends; returns it.
    pub async fn finished(&self, id: &str) -> Value {
        self.finished_as(id, CLIENT_TOKEN).await
    }

    /// [`Self::finished`] for a job of the client of `token`.
    pub async fn finished_as(&self, id: &str, token: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, job) = self
                .get_as(&format!("/api/v1/jobs/{id}?wait=10"), token)
                .await;
            assert_eq!(status, 200, "{job}");
            let st = job["status"].as_str().unwrap_or_default();
            if ["finished", "failed", "quarantined", "cancelled"].contains(&st)
                || Instant::now() > deadline
            {
                return job;
            }
        }
    }

    /// Fails the test if the orchestrator or the worker panicked.
    pub fn assert_no_panic(&self) {
        let (orchestrator, worker) = self.logs();
        assert!(
            !orchestrator.contains("panicked"),
            "orchestrator panicked:\n{orchestrator}"
        );
        assert!(!worker.contains("panicked"), "worker panicked:\n{worker}");
    }

    /// Creates five `/jobs/one/sleep` jobs of `ms` each and waits (up to
    /// `within`) until `worker_id` holds all five tasks; their job ids.
    pub async fn five_held_tasks(&self, worker_id: &str, ms: u64, within: Duration) -> Vec<String> {
        let mut ids = Vec::new();
        for _ in 0..5 {
            ids.push(self.create("/jobs/one/sleep", json!({ "ms": ms })).await);
        }
        wait_until("the worker to hold all five", within, || async {
            self.worker_view(worker_id)
                .await
                .is_some_and(|w| w["in_flight_tasks"].as_array().unwrap().len() == 5)
        })
        .await;
        ids
    }

    pub fn logs(&self) -> (String, String) {
        (
            self.orchestrator
                .as_ref()
                .map(|p| p.log_text())
                .unwrap_or_default(),
            self.worker
                .as_ref()
                .map(|p| p.log_text())
                .unwrap_or_default(),
        )
    }
}

/// A flow that runs one task of `skill` once (no retries), passing the
/// job's `bytes` and `ms` as params; at `/api/v1/jobs/one/<skill>`.
pub fn one_task_flow(skill: &str) -> String {
    format!(
        r#"
name = "one_{skill}"
api_endpoint = "/jobs/one/{skill}"
api_version = "v1"
[states.start]
start = true
dispatch.task = "{skill}"
dispatch.params.bytes = "initial.bytes"
dispatch.params.ms = "initial.ms"
dispatch.on = {{ success = "done" }}
dispatch.retry = {{ max_attempts = 1 }}
[states.done]
end = "finished"
"#
    )
}

/// `method path` as the client of `token` with `body`: the status and
/// the JSON answer (`null` when there is none).
pub async fn send(
    stack: &Stack,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: &str,
) -> (u16, Value) {
    let resp = stack
        .http
        .request(method, format!("{}{path}", stack.base))
        .header("X-Client-Token", token)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Creates echo job `n` through `base` (3 s at most); the id when it
/// answered 202, `None` otherwise (e.g. the orchestrator is down).
pub async fn try_create_echo(http: &reqwest::Client, base: &str, n: usize) -> Option<String> {
    let resp = http
        .post(format!("{base}/api/v1/jobs/test"))
        .header("X-Client-Token", CLIENT_TOKEN)
        .json(&json!({"message": format!("job{n}"), "multiply": 1}))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .ok()?;
    if resp.status().as_u16() != 202 {
        return None;
    }
    let v: Value = resp.json().await.ok()?;
    v["job_id"].as_str().map(str::to_string)
}

pub fn echo_body(message: &str, multiply: u64) -> Value {
    json!({"message": message, "multiply": multiply})
}

/// A signed worker message, as a worker would send it.
pub async fn worker_post(
    stack: &Stack,
    method: reqwest::Method,
    path: &str,
    worker: &str,
    body: Value,
) -> (u16, Value) {
    worker_post_as(stack, method, path, worker, WORKER_TOKEN, body).await
}

/// [`worker_post`] with the worker's `token` (its own, a pattern's, …).
pub async fn worker_post_as(
    stack: &Stack,
    method: reqwest::Method,
    path: &str,
    worker: &str,
    token: &str,
    mut body: Value,
) -> (u16, Value) {
    body["nonce"] = json!(uuid_like());
    rxon::seal(&mut body, worker, token, chrono_now());
    let resp = stack
        .http
        .request(method, format!("{}{path}", stack.base))
        .header("X-Worker-Token", token)
        .header("X-Worker-Id", worker)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

pub fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn uuid_like() -> String {
    format!("{:x}", rand_u128())
}

pub fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    (u128::from(h.finish()) << 64) | u128::from(std::process::id())
}

/// A tiny HTTP receiver: records the bodies POSTed to it.
pub async fn webhook_receiver(port: u16) -> std::sync::Arc<std::sync::Mutex<Vec<Value>>> {
    use tokio::io::AsyncWriteExt;
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let record = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                if let Some((_, body)) = read_request(&mut sock).await {
                    if let Ok(v) = serde_json::from_slice(&body) {
                        record.lock().unwrap().push(v);
                    }
                    let _ = sock
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                }
            });
        }
    });
    got
}

/// A multipart body as `curl -F name=… -F plugin=@… [-F manifest=@…]` sends it.
pub fn multipart(name: &str, component: &[u8], manifest: Option<&str>) -> (String, Vec<u8>) {
    let boundary = "----deploy-test-boundary-7d1f";
    let mut body = Vec::new();
    let mut part = |headers: &str, data: &[u8]| {
        body.extend_from_slice(format!("--{boundary}\r\n{headers}\r\n\r\n").as_bytes());
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    };
    part(
        "Content-Disposition: form-data; name=\"name\"",
        name.as_bytes(),
    );
    part(
        "Content-Disposition: form-data; name=\"plugin\"; filename=\"plugin.wasm\"\r\nContent-Type: application/wasm",
        component,
    );
    if let Some(m) = manifest {
        part(
            "Content-Disposition: form-data; name=\"manifest\"; filename=\"plugin.toml\"",
            m.as_bytes(),
        );
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Uploads a plugin version with `token`: status and answer.
pub async fn upload(stack: &Stack, token: &str, name: &str, component: &[u8]) -> (u16, Value) {
    let (content_type, body) = multipart(name, component, None);
    let resp = stack
        .http
        .post(format!("{}/api/v1/plugins", stack.base))
        .header("X-Client-Token", token)
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Reads one HTTP/1.1 request (its head, and a body of `Content-Length`
/// bytes); `None` when the peer closes first.
pub async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let length: usize = text[..end]
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap_or(0))
            })
            .unwrap_or(0);
        if buf.len() >= end + 4 + length {
            return Some((
                text[..end].to_string(),
                buf[end + 4..end + 4 + length].to_vec(),
            ));
        }
    }
}

/// Waits (up to `within`) until the orchestrator at `base` answers
/// `/_public/status` (ours and avtomatika alike).
pub async fn wait_listening(http: &reqwest::Client, base: &str, within: Duration) {
    wait_until("the orchestrator to listen", within, || async {
        http.get(format!("{base}/_public/status"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
}

/// Reads an SSE stream until `done` holds for the text so far (or 30 s).
pub async fn read_stream(mut resp: reqwest::Response, done: impl Fn(&str) -> bool) -> String {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done(&text) {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("the stream went quiet")
            .unwrap()
            .expect("the stream ended");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text
}
