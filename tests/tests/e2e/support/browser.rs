//! A real Chromium driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`, installed by `scripts/setup.sh --with-browser`):
//! chromedriver runs as a child process on a free loopback port and is
//! stopped with the test. Screenshots go to `target/dashboard-screenshots/`
//! (and to `$DASHBOARD_SCREENSHOTS_DIR` when set, e.g. `docs/screenshots`,
//! relative to the repository).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use super::{Proc, free_port, repo, wait_until};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long a page may take to show what a step waits for.
pub const STEP: Duration = Duration::from_secs(20);

pub struct Browser {
    pub client: Client,
    /// Stopped when the browser is dropped (after the client).
    _driver: Proc,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session.
    pub async fn start(log_dir: &std::path::Path) -> Self {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} is missing: run ./scripts/setup.sh --with-browser (it installs Debian's chromium and chromium-driver)"
            );
        }
        let port = free_port();
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1");
        let driver = Proc::spawn("chromedriver", cmd, log_dir.join("chromedriver.log"));
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        wait_until(
            "chromedriver to listen",
            Duration::from_secs(20),
            || async { http.get(format!("{url}/status")).send().await.is_ok() },
        )
        .await;
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,860", "--no-first-run", "--disable-extensions",
                         format!("--user-data-dir={}", profile.path().display())],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot start a Chromium session: {e}"));
        Self {
            client,
            _driver: driver,
            _profile: profile,
        }
    }

    /// The element `css` once it is on the page.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(STEP)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}` on the page within {STEP:?}: {e}"))
    }

    /// Clicks `css` once it is on the page; found again if the page redrew
    /// it between finding and clicking (live pages do).
    pub async fn click(&self, css: &str) {
        let deadline = std::time::Instant::now() + STEP;
        loop {
            let clicked = match self.client.find(Locator::Css(css)).await {
                Ok(el) => el.click().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match clicked {
                Ok(()) => return,
                Err(e) if std::time::Instant::now() > deadline => {
                    panic!("cannot click `{css}` within {STEP:?}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Whether `css` matches something now.
    pub async fn has(&self, css: &str) -> bool {
        self.client.find(Locator::Css(css)).await.is_ok()
    }

    /// The text of `css` once it contains `text`.
    pub async fn wait_text(&self, css: &str, text: &str) -> String {
        let mut last = String::new();
        let deadline = std::time::Instant::now() + STEP;
        while std::time::Instant::now() < deadline {
            if let Ok(el) = self.client.find(Locator::Css(css)).await {
                last = el.text().await.unwrap_or_default();
                if last.contains(text) {
                    return last;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("`{css}` did not come to contain {text:?} within {STEP:?}; it shows {last:?}")
    }

    /// Runs `script` in the page (`return …` for a value).
    pub async fn run(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// The status of a `fetch(path)` made by the page with its own cookies.
    pub async fn page_fetch_status(&self, path: &str) -> u16 {
        let script = format!(
            "const done = arguments[0]; fetch({path:?}, {{credentials: 'same-origin'}}).then(r => done(r.status), () => done(0));"
        );
        let v = self
            .client
            .execute_async(&script, vec![])
            .await
            .unwrap_or_else(|e| panic!("fetch from the page failed: {e}"));
        v.as_u64().unwrap_or(0) as u16
    }

    /// Saves a screenshot as `<name>.png`; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("cannot take a screenshot: {e}"));
        let dir = repo().join("target").join("dashboard-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, &png).unwrap();
        if let Some(docs) = std::env::var_os("DASHBOARD_SCREENSHOTS_DIR") {
            // A relative path is the repository's (tests run in `tests/`).
            let docs = repo().join(docs);
            std::fs::create_dir_all(&docs).unwrap();
            std::fs::write(docs.join(format!("{name}.png")), &png).unwrap();
        }
        path
    }

    /// Runs the test's steps; if one fails, saves a screenshot of the page
    /// as it was (`FAILED-<name>.png`) before failing.
    pub async fn steps<F: std::future::Future<Output = ()>>(&self, name: &str, steps: F) {
        use futures_util::FutureExt;
        let outcome = std::panic::AssertUnwindSafe(steps).catch_unwind().await;
        if let Err(panic) = outcome {
            let shot = self.screenshot(&format!("FAILED-{name}")).await;
            eprintln!("the page when the test failed: {}", shot.display());
            std::panic::resume_unwind(panic);
        }
    }
}
