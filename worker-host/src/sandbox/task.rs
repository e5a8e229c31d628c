//! Runs one task in a fresh instance, bounded in time and memory.
//!
//! One `Store` per attempt: a timeout or a trap is handled by dropping it, and
//! nothing a task did can leak into the next one.

use std::time::{Duration, Instant};

use rxon::error_code;
use tokio::sync::watch;
use wasmtime::component::Linker;
use wasmtime::{Store, Trap, UpdateDeadline};

use super::bindings::{Skill, Task, TaskPlugin, TaskPluginPre};
use super::engine::SandboxEngine;
use super::state::{Progress, TaskState};
use crate::outcome::{TaskOutcome, code_of};

/// One task to run.
#[derive(Debug, Clone)]
pub struct TaskInput {
    pub task_id: String,
    pub job_id: String,
    pub task_type: String,
    /// The params object, as JSON text.
    pub params: String,
}

/// The linker every plugin is checked against: WASI (granting nothing, see
/// [`TaskState`]) plus the `host` interface.
pub fn linker(engine: &SandboxEngine) -> anyhow::Result<Linker<TaskState>> {
    let mut linker = Linker::new(&engine.engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    TaskPlugin::add_to_linker::<TaskState, wasmtime::component::HasSelf<TaskState>>(
        &mut linker,
        |state| state,
    )?;
    Ok(linker)
}

fn new_store(
    engine: &SandboxEngine,
    task_id: &str,
    timeout: Duration,
    progress: watch::Sender<Option<Progress>>,
) -> Store<TaskState> {
    let config = &engine.config;
    let state = TaskState::new(
        task_id.to_string(),
        Instant::now() + timeout,
        config.memory_limit,
        config.output_capture_bytes,
        progress,
    );
    let mut store = Store::new(&engine.engine, state);
    store.limiter(|state| &mut state.limiter);
    // At every epoch tick: stop the guest if its deadline passed, else yield
    // to tokio so a busy guest never monopolises a runtime thread.
    store.epoch_deadline_callback(|mut ctx| {
        if Instant::now() >= ctx.data().deadline {
            ctx.data_mut().timed_out = true;
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    store.set_epoch_deadline(1);
    store
}

/// Why a sandboxed call did not return normally.
fn classify_failure(
    store: &Store<TaskState>,
    error: Option<wasmtime::Error>,
    timeout: Duration,
    memory_limit: usize,
) -> TaskOutcome {
    let state = store.data();
    let timed_out = state.timed_out
        || error
            .as_ref()
            .is_some_and(|e| matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)));
    if error.is_none() || timed_out {
        return TaskOutcome::failed(
            error_code::TIMEOUT,
            format!(
                "task exceeded its time limit of {} and was stopped",
                fmt_duration(timeout)
            ),
        );
    }
    if state.limiter.exceeded {
        return TaskOutcome::failed(
            error_code::RESOURCE_EXHAUSTED,
            format!(
                "task exceeded its memory limit of {} MiB and was stopped",
                memory_limit >> 20
            ),
        );
    }
    let trap = match error.as_ref().and_then(|e| e.downcast_ref::<Trap>()) {
        Some(trap) => trap.to_string(),
        None => error
            .map(|e| format!("{e:#}"))
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or("")
            .to_string(),
    };
    // The guest's last words (e.g. a Rust panic message) say why it crashed.
    let stderr = String::from_utf8_lossy(&state.stderr.contents()).to_string();
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("note: run with"))
        .collect();
    let last_words = lines[lines.len().saturating_sub(2)..].join(" ");
    let message = if last_words.is_empty() {
        format!("plugin crashed: {trap}")
    } else {
        format!("plugin crashed: {trap}: {last_words}")
    };
    TaskOutcome::failed(error_code::PERMANENT, message)
}

fn fmt_duration(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// Logs what the guest wrote to stdout/stderr, tagged with the task id.
fn log_captured_output(store: &Store<TaskState>) {
    let state = store.data();
    for (stream, pipe) in [("stdout", &state.stdout), ("stderr", &state.stderr)] {
        let bytes = pipe.contents();
        for line in String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|l| !l.is_empty())
        {
            tracing::info!(task_id = %state.task_id, stream, "plugin {stream}: {line}");
        }
    }
}

/// Runs `input` in a fresh instance of `pre` and turns every way it can end
/// into a [`TaskOutcome`].
pub async fn run_task(
    engine: &SandboxEngine,
    pre: &TaskPluginPre<TaskState>,
    input: &TaskInput,
    progress: watch::Sender<Option<Progress>>,
) -> TaskOutcome {
    let timeout = engine.config.task_timeout;
    let Ok(_permit) = engine.instance_permits.acquire().await else {
        return TaskOutcome::failed(error_code::TRANSIENT, "the sandbox is shutting down");
    };
    let mut store = new_store(engine, &input.task_id, timeout, progress);
    let task = Task {
        task_id: input.task_id.clone(),
        job_id: input.job_id.clone(),
        task_type: input.task_type.clone(),
        params: input.params.clone(),
    };
    let call = async {
        let instance = pre.instantiate_async(&mut store).await?;
        instance
            .taskworker_plugin_handler()
            .call_execute(&mut store, &task)
            .await
    };
    // The epoch callback stops running guest code; this also bounds a guest
    // that is blocked in a host call (e.g. sleeping).
    let result = tokio::time::timeout(timeout, call).await;
    log_captured_output(&store);
    match result {
        Ok(Ok(Ok(output))) => completed(output.status, &output.data),
        Ok(Ok(Err(error))) => TaskOutcome::failed(code_of(error.kind), error.message),
        Ok(Err(trap)) => classify_failure(&store, Some(trap), timeout, engine.config.memory_limit),
        Err(_elapsed) => classify_failure(&store, None, timeout, engine.config.memory_limit),
    }
}

fn completed(status: String, data: &str) -> TaskOutcome {
    let status = if status.trim().is_empty() {
        rxon::status::SUCCESS.to_string()
    } else {
        status
    };
    if status == rxon::status::FAILURE {
        return TaskOutcome::failed(
            error_code::CONTRACT_VIOLATION,
            "plugin returned status `failure` as a result; failures must be returned as task-error",
        );
    }
    match serde_json::from_str::<serde_json::Value>(data) {
        Ok(serde_json::Value::Object(data)) => TaskOutcome::Completed { status, data },
        Ok(other) => TaskOutcome::failed(
            error_code::CONTRACT_VIOLATION,
            format!(
                "plugin result data must be a JSON object, got {}",
                json_kind(&other)
            ),
        ),
        Err(e) => TaskOutcome::failed(
            error_code::CONTRACT_VIOLATION,
            format!("plugin result data is not valid JSON: {e}"),
        ),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Asks a plugin for its skills, in a fresh instance bounded like a task.
pub async fn describe(
    engine: &SandboxEngine,
    pre: &TaskPluginPre<TaskState>,
) -> anyhow::Result<Vec<Skill>> {
    let timeout = engine.config.task_timeout.min(Duration::from_secs(10));
    let (progress, _) = watch::channel(None);
    let _permit = engine.instance_permits.acquire().await?;
    let mut store = new_store(engine, "describe", timeout, progress);
    let call = async {
        let instance = pre.instantiate_async(&mut store).await?;
        instance
            .taskworker_plugin_handler()
            .call_describe(&mut store)
            .await
    };
    let result = tokio::time::timeout(timeout, call).await;
    log_captured_output(&store);
    match result {
        Ok(Ok(skills)) => Ok(skills),
        Ok(Err(trap)) => {
            match classify_failure(&store, Some(trap), timeout, engine.config.memory_limit) {
                TaskOutcome::Failed { message, .. } => {
                    anyhow::bail!("describe() failed: {message}")
                }
                TaskOutcome::Completed { .. } => anyhow::bail!("describe() failed"),
            }
        }
        Err(_) => anyhow::bail!("describe() did not return within {}", fmt_duration(timeout)),
    }
}
