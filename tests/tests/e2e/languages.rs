//! Plugins in three languages: the echo plugin written in Rust (on the
//! guest SDK), Python (componentize-py) and JavaScript (componentize-js)
//! each serves the scenario's job through the orchestrator; the Python
//! plugin that imports a PyPI library works; a second start of the worker
//! host loads the big Python and JavaScript components from the compiled
//! cache instead of compiling them. The Python and JavaScript components are
//! built from source by `scripts/build-lang-plugins.sh` (part of the test
//! command).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::*;
use serde_json::json;

pub(crate) fn lang_plugin(file: &str) -> PathBuf {
    let path = repo().join("target/lang-plugins").join(file);
    assert!(
        path.exists(),
        "{} is missing: run ./scripts/build-lang-plugins.sh (the test command does)",
        path.display()
    );
    path
}

const INFLECT_FLOW: &str = r#"
name = "inflect_flow"
api_endpoint = "/jobs/inflect"
api_version = "v1"
[states.start]
start = true
dispatch.task = "inflect_task"
dispatch.params.word = "initial.word"
dispatch.on = { success = "done" }
dispatch.retry = { max_attempts = 1 }
[states.done]
end = "finished"
"#;

/// Starts a worker on `plugins`, waits until it serves, runs the scenario's
/// job; returns the worker's log.
async fn serve_the_scenario(stack: &Stack, lang: &str, plugins: &Path, start: usize) -> String {
    let worker_id = format!("worker-{lang}");
    let mut worker = stack.spawn_worker_on(
        &worker_id,
        &format!("worker-{lang}-{start}.log"),
        plugins,
        |cmd| {
            cmd.env("WORKER_CACHE_DIR", stack.dir.path().join("lang-cache"));
        },
    );
    // A first start compiles a 12-18 MB component (seconds, more on a busy machine).
    wait_until(
        &format!("the {lang} worker to register"),
        Duration::from_secs(240),
        || async {
            worker
                .log_text()
                .contains("registered with the orchestrator")
        },
    )
    .await;
    let id = stack
        .create("/jobs/test", echo_body("Hello World", 3))
        .await;
    let job = stack.finished(&id).await;
    assert_eq!(job["status"], "finished", "{lang}: {job}");
    assert_eq!(
        job["result"]["processed_message"], "Hello World Hello World Hello World",
        "{lang}: {job}"
    );
    assert_eq!(job["result"]["original_message"], "Hello World");
    assert_eq!(job["result"]["multiplied_by"], 3);
    assert_eq!(job["task_worker_id"], worker_id.as_str());
    if lang == "python" {
        let id = stack
            .create("/jobs/inflect", json!({"word": "octopus"}))
            .await;
        let job = stack.finished(&id).await;
        assert_eq!(job["status"], "finished", "{job}");
        assert_eq!(job["result"]["plural"], "octopi", "{job}");
        assert_eq!(job["result"]["library"], "inflection 0.5.1", "{job}");
    }
    worker.stop();
    worker.log_text()
}

#[tokio::test]
async fn echo_in_rust_python_and_javascript_serves_the_scenario_and_restarts_from_the_cache() {
    let mut stack = Stack::new();
    stack.add_blueprint("inflect_flow", INFLECT_FLOW);
    stack.start_orchestrator();
    stack.wait_ready().await;
    let languages = [
        ("rust", vec![PathBuf::from(plugin_fixtures::ECHO_TASK)]),
        (
            "python",
            vec![
                lang_plugin("echo_task_py.wasm"),
                lang_plugin("inflect_task_py.wasm"),
            ],
        ),
        ("javascript", vec![lang_plugin("echo_task_js.wasm")]),
    ];
    for (lang, files) in languages {
        let plugins = stack.dir.path().join(format!("plugins-{lang}"));
        std::fs::create_dir(&plugins).unwrap();
        for f in &files {
            std::fs::copy(f, plugins.join(f.file_name().unwrap())).unwrap();
        }
        let first = serve_the_scenario(&stack, lang, &plugins, 0).await;
        let second = serve_the_scenario(&stack, lang, &plugins, 1).await;
        for f in &files {
            let name = f.file_name().unwrap().to_str().unwrap();
            let compiled = format!("{name}: compiled in");
            let cached = format!("{name}: compiled code loaded from the cache");
            assert!(first.contains(&compiled), "{lang}, first start:\n{first}");
            assert!(second.contains(&cached), "{lang}, second start:\n{second}");
            assert!(
                !second.contains(&compiled),
                "{lang} compiled again:\n{second}"
            );
        }
        for log in [&first, &second] {
            assert!(!log.contains("panicked"), "{log}");
        }
    }
    let (orchestrator, _) = stack.logs();
    assert!(!orchestrator.contains("panicked"), "{orchestrator}");
}

/// `worker-host new --lang …`: each generated project passes its own tests,
/// builds into a component, and that component runs its task in the worker
/// host, all as generated.
#[test]
fn a_scaffolded_plugin_in_each_language_tests_builds_and_runs_as_generated() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let tools = repo().join("target/tools/venv-componentize-py/bin");
    assert!(
        tools.join("componentize-py").exists(),
        "componentize-py is missing: run ./scripts/build-lang-plugins.sh (the test command does)"
    );
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Rust builds are kept between runs here.
    let rust_target = repo().join("target/scaffold-rust");
    let check = |what: &str, cmd: &mut Command| {
        let out = cmd.env("PATH", &path).output().unwrap();
        assert!(
            out.status.success(),
            "{what} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    for (lang, wasm) in [
        ("python", "hello_python.wasm".to_string()),
        ("js", "hello_js.wasm".to_string()),
        (
            "rust",
            rust_target
                .join("wasm32-wasip2/release/hello_rust.wasm")
                .display()
                .to_string(),
        ),
    ] {
        let name = format!("hello_{lang}");
        check(
            "worker-host new",
            Command::new(binary("worker-host"))
                .args(["new", "--lang", lang, &name, "--dir"])
                .arg(dir.path()),
        );
        let project = dir.path().join(&name);
        if lang == "rust" {
            let tests = check(
                "cargo test",
                Command::new("cargo")
                    .arg("test")
                    .current_dir(&project)
                    .env("CARGO_TARGET_DIR", &rust_target),
            );
            assert!(tests.contains("2 passed"), "{tests}");
            check(
                "cargo build",
                Command::new("cargo")
                    .args(["build", "--release", "--target", "wasm32-wasip2"])
                    .current_dir(&project)
                    .env("CARGO_TARGET_DIR", &rust_target),
            );
        } else {
            // build.sh runs the generated tests first.
            check("build.sh", Command::new("./build.sh").current_dir(&project));
        }
        let out = check(
            "worker-host run",
            Command::new(binary("worker-host"))
                .arg("run")
                .arg(project.join(&wasm))
                .args(["--params", r#"{"name": "World"}"#]),
        );
        let result: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(result["status"], "success", "{lang}: {result}");
        assert_eq!(result["data"]["text"], "Hello, World!", "{lang}: {result}");
    }
}
