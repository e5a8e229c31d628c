//! A real S3-compatible server for one test: `s3s-fs` (installed by
//! `scripts/setup.sh --with-s3-server`) on a free loopback port, with
//! credentials (so signatures are checked) and a bucket, over a temporary
//! directory dropped afterwards.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{Proc, free_port};

pub const ACCESS_KEY: &str = "test-access-key";
pub const SECRET_KEY: &str = "test-secret-key-0123456789";
pub const BUCKET: &str = "avtomatika-payloads";

pub struct S3Server {
    pub endpoint: String,
    pub port: u16,
    /// Stopped before the directory goes (fields drop in order).
    pub proc: Proc,
    /// `data/<bucket>/…` (the objects) and the server's log.
    pub root: tempfile::TempDir,
}

/// `s3s-fs` on the PATH, or where `cargo install` puts it.
fn binary() -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("s3s-fs"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        candidates.push(Path::new(&home).join("bin/s3s-fs"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/s3s-fs"));
    }
    candidates.into_iter().find(|p| p.exists()).expect(
        "s3s-fs is not installed: run ./scripts/setup.sh --with-s3-server (the test command does)",
    )
}

impl S3Server {
    pub async fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        // A bucket is a directory of the data directory.
        std::fs::create_dir_all(root.path().join("data").join(BUCKET)).unwrap();
        let port = free_port();
        let mut cmd = Command::new(binary());
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path().join("data"))
            .env("RUST_LOG", "warn");
        let log = root.path().join("s3s-fs.log");
        let proc = Proc::spawn("s3s-fs", cmd, log);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "s3s-fs did not start listening"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            proc,
            root,
        }
    }

    /// The object's file in the server's directory.
    pub fn file(&self, key: &str) -> PathBuf {
        self.root.path().join("data").join(BUCKET).join(key)
    }

    /// The environment an orchestrator or SDK worker needs for this store.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("S3_ENDPOINT_URL", self.endpoint.clone()),
            ("S3_ACCESS_KEY", ACCESS_KEY.into()),
            ("S3_SECRET_KEY", SECRET_KEY.into()),
            ("S3_DEFAULT_BUCKET", BUCKET.into()),
            ("S3_REGION", "us-east-1".into()),
        ]
    }
}
