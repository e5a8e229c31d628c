//! Grants from a plugin's manifest, capped by the worker's policy (real
//! wasmtime, the real `chaos_task` with a manifest beside it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use plugin_fixtures::{CHAOS_TASK, ECHO_TASK};
use serde_json::json;
use worker_host::grants::Policy;
use worker_host::outcome::TaskOutcome;
use worker_host::plugin_store::{Plugin, PluginError, PluginLoader, PluginSet};
use worker_host::sandbox::{RunOptions, Sandbox, Task};

/// A plugins directory with `chaos_task.wasm` and the given manifest, and a
/// data directory holding `model.txt`.
fn setup(manifest: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("model.txt"), "weights").unwrap();
    std::fs::copy(CHAOS_TASK, plugins.join("chaos_task.wasm")).unwrap();
    let manifest = manifest.replace("$DATA", &data.display().to_string());
    std::fs::write(plugins.join("chaos_task.toml"), manifest).unwrap();
    (dir, plugins, data)
}

async fn run(
    engine: &Sandbox,
    plugin: &Plugin,
    skill: &str,
    params: serde_json::Value,
) -> serde_json::Value {
    let input = Task {
        task_id: "t".into(),
        job_id: "j".into(),
        task_type: skill.into(),
        params: params.to_string(),
    };
    match plugin.run(engine, &input, RunOptions::default()).await {
        TaskOutcome::Completed { data, .. } => serde_json::Value::Object(data),
        other => panic!("{skill}: {other:?}"),
    }
}

const MANIFEST: &str = r#"
[limits]
timeout_seconds = 5
memory_mb = 32
max_concurrent_tasks = 1

[config]
keys = ["api_url"]
secret_keys = ["api_key"]

[[files]]
host = "$DATA"
guest = "/data"
"#;

fn policy(data: &Path) -> Policy {
    toml::from_str(&format!(
        "allowed_dirs = [{:?}]\n[config.chaos_task]\napi_url = \"https://api.example.com\"\napi_key = \"s3cr3t-value\"\n",
        data.parent().unwrap()
    ))
    .unwrap()
}

#[tokio::test]
async fn a_granted_plugin_reads_its_config_and_its_read_only_directory_and_nothing_more() {
    let (_dir, plugins, data) = setup(MANIFEST);
    let engine = super::engine(Duration::from_secs(20), 128);
    let loader = PluginLoader::with_policy(engine.clone(), policy(&data)).unwrap();
    let plugin = loader
        .load_file(&plugins.join("chaos_task.wasm"))
        .await
        .unwrap();
    assert_eq!(plugin.grants.timeout, Some(Duration::from_secs(5)));
    assert_eq!(plugin.grants.memory_limit, Some(32 << 20));

    let v = run(&engine, &plugin, "read_config", json!({"key": "api_url"})).await;
    assert_eq!(v["found"], true, "{v}");
    assert_eq!(v["length"], "https://api.example.com".len());
    let v = run(
        &engine,
        &plugin,
        "read_config",
        json!({"key": "undeclared"}),
    )
    .await;
    assert_eq!(v["found"], false, "{v}");

    let v = run(
        &engine,
        &plugin,
        "read_host_file",
        json!({"path": "/data/model.txt"}),
    )
    .await;
    assert_eq!(v["read"], true, "{v}");
    assert_eq!(v["bytes"], 7);
    let v = run(
        &engine,
        &plugin,
        "write_file",
        json!({"path": "/data/new.txt"}),
    )
    .await;
    assert_eq!(v["written"], false, "{v}");
    assert!(!data.join("new.txt").exists());
    for escape in [
        "/data/../etc/passwd",
        "/data/../../../../etc/passwd",
        "/etc/passwd",
    ] {
        let v = run(&engine, &plugin, "read_host_file", json!({"path": escape})).await;
        assert_eq!(v["read"], false, "{escape}: {v}");
    }
    // Its memory cap is its manifest's, not the worker's.
    let task = Task {
        task_id: "t".into(),
        job_id: "j".into(),
        task_type: "alloc_forever".into(),
        params: "{}".into(),
    };
    let outcome = plugin.run(&engine, &task, RunOptions::default()).await;
    let TaskOutcome::Failed { message, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(message.contains("32 MiB"), "{message}");
}

#[tokio::test]
async fn without_a_manifest_the_probes_still_get_nothing() {
    let engine = super::engine(Duration::from_secs(20), 64);
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(CHAOS_TASK, dir.path().join("chaos_task.wasm")).unwrap();
    // A generous policy does not matter without a manifest.
    let loader = PluginLoader::with_policy(engine.clone(), policy(dir.path())).unwrap();
    let plugin = loader
        .load_file(&dir.path().join("chaos_task.wasm"))
        .await
        .unwrap();
    let v = run(&engine, &plugin, "read_config", json!({"key": "api_key"})).await;
    assert_eq!(v["found"], false, "{v}");
    let v = run(
        &engine,
        &plugin,
        "read_host_file",
        json!({"path": "/etc/passwd"}),
    )
    .await;
    assert_eq!(v["read"], false, "{v}");
    let v = run(&engine, &plugin, "write_file", json!({"path": "/tmp/x"})).await;
    assert_eq!(v["written"], false, "{v}");
}

#[tokio::test]
async fn a_manifest_asking_for_more_than_the_policy_is_refused_and_the_others_load() {
    let (_dir, plugins, data) = setup(MANIFEST);
    std::fs::copy(ECHO_TASK, plugins.join("echo_task.wasm")).unwrap();
    let engine = super::engine(Duration::from_secs(20), 128);
    // No allowed_dirs: the manifest's directory is refused.
    let stingy: Policy = toml::from_str("").unwrap();
    let loader = PluginLoader::with_policy(engine.clone(), stingy).unwrap();
    let err = loader
        .load_file(&plugins.join("chaos_task.wasm"))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, PluginError::Grant { .. }), "{err}");
    assert!(err.to_string().contains("allowed_dirs"), "{err}");
    let set = loader
        .load_dir(&plugins, &PluginSet::default())
        .await
        .unwrap();
    assert_eq!(set.skill_names(), vec!["echo_task".to_string()]);
    // A manifest with a misspelt key is refused too, naming it.
    std::fs::write(plugins.join("chaos_task.toml"), "[limits]\ntimeout = 5\n").unwrap();
    let loader = PluginLoader::with_policy(engine, policy(&data)).unwrap();
    let err = loader
        .load_file(&plugins.join("chaos_task.wasm"))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("unknown field `timeout`"), "{err}");
}
