//! Hostile plugins (real wasmtime, real components from `plugins/`): what
//! they *return* or *declare* is bounded, refused before it is copied, and
//! reported with a named error; the sandbox goes on serving afterwards.

use std::path::Path;
use std::time::Duration;

use plugin_fixtures::{BLOATED_TASK, CHAOS_TASK, ECHO_TASK, IMPOSTOR_TASK};
use serde_json::json;
use worker_host::limits;
use worker_host::outcome::TaskOutcome;
use worker_host::plugin_store::{Plugin, PluginError, PluginLoader, PluginSet};
use worker_host::sandbox::Sandbox;

use super::{failure, run};

fn engine() -> Sandbox {
    super::engine(Duration::from_secs(20), 128)
}

async fn load(engine: &Sandbox, path: &str) -> Result<Plugin, PluginError> {
    PluginLoader::new(engine.clone())
        .unwrap()
        .load_file(Path::new(path))
        .await
}

/// The sandbox still runs an ordinary task after the hostile one.
async fn still_serves(engine: &Sandbox) {
    let echo = load(engine, ECHO_TASK).await.unwrap();
    let outcome = run(
        engine,
        &echo,
        "echo_task",
        json!({"message": "ok", "multiply": 1}),
    )
    .await;
    assert!(
        matches!(outcome, TaskOutcome::Completed { .. }),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn results_and_errors_over_the_limit_are_refused_before_the_host_copies_them() {
    let engine = engine();
    let chaos = load(&engine, CHAOS_TASK).await.unwrap();
    let limit = limits::DEFAULT_MAX_RESULT_BYTES;
    for skill in ["big_result", "big_error", "big_status"] {
        let outcome = run(&engine, &chaos, skill, json!({"bytes": 8 << 20})).await;
        let (code, message) = failure(&outcome);
        assert_eq!(code, "RESOURCE_EXHAUSTED_ERROR", "{skill}: {message}");
        assert!(
            message.contains(&format!("the limit is {limit} bytes")),
            "{skill}: {message}"
        );
        assert!(message.len() < 400, "{skill}: the message stays short");
    }
    // Just under the limit is delivered whole.
    let outcome = run(
        &engine,
        &chaos,
        "big_result",
        json!({"bytes": limit - 1000}),
    )
    .await;
    let TaskOutcome::Completed { data, .. } = outcome else {
        panic!("a result under the limit must pass: {outcome:?}")
    };
    assert_eq!(data["blob"].as_str().unwrap().len(), limit - 1000);
    still_serves(&engine).await;
}

#[tokio::test]
async fn a_status_must_be_a_short_name() {
    let engine = engine();
    let chaos = load(&engine, CHAOS_TASK).await.unwrap();
    let outcome = run(&engine, &chaos, "big_status", json!({"bytes": 100_000})).await;
    let (code, message) = failure(&outcome);
    assert_eq!(code, "CONTRACT_VIOLATION_ERROR");
    assert!(message.contains("100000 bytes"), "{message}");
    assert!(message.len() < 400, "{message}");
}

#[tokio::test]
async fn output_beyond_the_capture_buffer_is_dropped_and_the_task_goes_on() {
    let engine = engine();
    let chaos = load(&engine, CHAOS_TASK).await.unwrap();
    let outcome = run(&engine, &chaos, "print_flood", json!({"bytes": 4 << 20})).await;
    let TaskOutcome::Completed { data, .. } = outcome else {
        panic!("printing a lot must not kill the task: {outcome:?}")
    };
    assert_eq!(data["printed"], 4 << 20);
}

#[tokio::test]
async fn exhausting_the_handle_limit_names_the_cause() {
    let engine = engine();
    let chaos = load(&engine, CHAOS_TASK).await.unwrap();
    let outcome = run(&engine, &chaos, "leak_handles", json!({})).await;
    let (code, message) = failure(&outcome);
    assert_eq!(code, "RESOURCE_EXHAUSTED_ERROR", "{message}");
    assert!(message.contains("handle limit exceeded"), "{message}");
    assert!(!message.ends_with(':'), "{message}");
    still_serves(&engine).await;
}

#[tokio::test]
async fn a_huge_self_description_is_refused_at_load_naming_the_limit() {
    let engine = engine();
    let err = load(&engine, BLOATED_TASK).await.err().unwrap();
    let text = err.to_string();
    assert!(text.contains("describe()"), "{text}");
    assert!(
        text.contains(&format!(
            "the limit is {} bytes",
            limits::MAX_DESCRIBE_BYTES
        )),
        "{text}"
    );
    assert!(!text.contains("task exceeded"), "{text}");
    // In a directory it is skipped; the others load.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(BLOATED_TASK, dir.path().join("bloated_task.wasm")).unwrap();
    std::fs::copy(ECHO_TASK, dir.path().join("echo_task.wasm")).unwrap();
    let set = PluginLoader::new(engine.clone())
        .unwrap()
        .load_dir(dir.path(), &PluginSet::default())
        .await
        .unwrap();
    assert_eq!(set.skill_names(), vec!["echo_task".to_string()]);
}

#[test]
fn describe_limits_name_the_limit() {
    use worker_host::sandbox::bindings::Skill;
    let skill = |name: &str| Skill {
        name: name.into(),
        version: "1".into(),
        description: String::new(),
        input_schema: None,
        output_schema: None,
        output_statuses: vec![],
    };
    let many: Vec<Skill> = (0..100).map(|i| skill(&format!("s{i}"))).collect();
    let err = worker_host::plugin_store::validate_skills(&many).unwrap_err();
    assert!(err.contains("MAX_SKILLS_PER_PLUGIN"), "{err}");
    let mut long = skill("s");
    long.description = "d".repeat(limits::MAX_SKILL_DESCRIPTION + 1);
    let err = worker_host::plugin_store::validate_skills(&[long]).unwrap_err();
    assert!(err.contains("MAX_SKILL_DESCRIPTION"), "{err}");
    let mut schema = skill("s");
    schema.input_schema = Some(format!("\"{}\"", "x".repeat(limits::MAX_SCHEMA_BYTES)));
    let err = worker_host::plugin_store::validate_skills(&[schema]).unwrap_err();
    assert!(err.contains("MAX_SCHEMA_BYTES"), "{err}");
    let err = worker_host::plugin_store::validate_skills(&[skill("bad name")]).unwrap_err();
    assert!(err.contains("MAX_SKILL_NAME"), "{err}");
}

#[tokio::test]
async fn a_newcomer_declaring_a_served_skill_is_refused_and_the_incumbent_keeps_it() {
    let engine = engine();
    let loader = PluginLoader::new(engine.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The impostor's name sorts first: by name order alone it would win.
    std::fs::copy(ECHO_TASK, dir.path().join("zz_echo_task.wasm")).unwrap();
    let incumbent = loader
        .load_dir(dir.path(), &PluginSet::default())
        .await
        .unwrap();
    std::fs::copy(IMPOSTOR_TASK, dir.path().join("aa_impostor.wasm")).unwrap();
    let set = loader.load_dir(dir.path(), &incumbent).await.unwrap();
    let plugin = set.get("echo_task").unwrap();
    assert!(
        plugin.path.ends_with("zz_echo_task.wasm"),
        "{}",
        plugin.path.display()
    );
    // Without an incumbent (a fresh start), file name order decides.
    let fresh = loader
        .load_dir(dir.path(), &PluginSet::default())
        .await
        .unwrap();
    assert!(
        fresh
            .get("echo_task")
            .unwrap()
            .path
            .ends_with("aa_impostor.wasm")
    );
}
