//! Runs one task in a fresh instance, bounded in time, memory and in how much
//! data it may hand the host.
//!
//! One `Store` per attempt: a timeout or a trap is handled by dropping it, and
//! nothing a task did can leak into the next one.

use std::time::{Duration, Instant};

use rxon::error_code;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wasmtime::component::Linker;
use wasmtime::{Store, Trap, UpdateDeadline};

use super::bindings::{Skill, Task, TaskPlugin, TaskPluginPre};
use super::engine::Sandbox;
use super::state::{PluginEvent, Progress, Reports, TaskState};
use crate::grants::Grants;
use crate::limits::{self, MAX_LOGGED_OUTPUT_LINES, for_log};
use crate::outcome::TaskOutcome;

/// What a caller of [`crate::plugin_store::Plugin::run`] may add to a task:
/// where its progress reports and events go, and a token that stops it.
/// The default has none (progress and events are dropped; the task runs to
/// its end or its bounds).
#[derive(Debug, Default)]
pub struct RunOptions {
    pub progress: Option<watch::Sender<Option<Progress>>>,
    /// Events the plugin emits, in order; closed when the task's instance
    /// is gone.
    pub events: Option<tokio::sync::mpsc::Sender<PluginEvent>>,
    pub cancel: Option<CancellationToken>,
    /// The worker's object store, for the task's job (granted per plugin).
    pub objects: Option<(
        std::sync::Arc<crate::objects::WorkerObjects>,
        super::objects::Written,
    )>,
}

/// The RXON error code of a plugin's error kind.
fn code_of(kind: super::bindings::ErrorKind) -> &'static str {
    use super::bindings::ErrorKind;
    match kind {
        ErrorKind::Transient => error_code::TRANSIENT,
        ErrorKind::Permanent => error_code::PERMANENT,
        ErrorKind::InvalidInput => error_code::INVALID_INPUT,
        ErrorKind::IntegrityMismatch => error_code::INTEGRITY_MISMATCH,
        ErrorKind::Dependency => error_code::DEPENDENCY,
        ErrorKind::ResourceExhausted => error_code::RESOURCE_EXHAUSTED,
    }
}

/// The linker every plugin is checked against: WASI (granting nothing, see
/// [`TaskState`]) plus the `host` interface.
pub(super) fn linker(engine: &wasmtime::Engine) -> anyhow::Result<Linker<TaskState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    TaskPlugin::add_to_linker::<TaskState, wasmtime::component::HasSelf<TaskState>>(
        &mut linker,
        |state| state,
    )?;
    // Outbound HTTP, checked per request against the plugin's grant.
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    // Config a plugin was granted; without a manifest, every key is absent.
    wasmtime_wasi_config::add_to_linker(&mut linker, |state: &mut TaskState| {
        wasmtime_wasi_config::WasiConfig::from(&state.config)
    })?;
    Ok(linker)
}

/// What runs in a store, for messages and bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Task,
    Describe,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::Task => "task",
            Call::Describe => "describe()",
        }
    }
}

fn new_store(
    engine: &Sandbox,
    task_id: &str,
    timeout: Duration,
    transfer_limit: usize,
    reports: Reports,
    grants: &Grants,
) -> Store<TaskState> {
    let config = &engine.config;
    let state = TaskState::new(
        task_id.to_string(),
        Instant::now() + timeout,
        grants.memory_limit.unwrap_or(config.memory_limit),
        config.output_capture_bytes,
        reports,
        grants,
    );
    let mut store = Store::new(&engine.engine, state);
    store.limiter(|state| &mut state.limiter);
    // Bounds every copy out of the guest (a call's result, a host call's
    // arguments) before the host allocates for it.
    store.set_hostcall_fuel(transfer_limit);
    store.set_max_component_handles(limits::MAX_HANDLES);
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

/// The text of a wasmtime error without its wasm backtrace: every cause in
/// the chain, so an exhausted store limit keeps its reason.
fn error_text(error: &wasmtime::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        let first = text.lines().next().unwrap_or("").trim();
        if first.is_empty() || first.starts_with("error while executing at wasm backtrace") {
            continue;
        }
        if !parts.iter().any(|p| p == first) {
            parts.push(first.to_string());
        }
    }
    if parts.is_empty() {
        "unknown error".into()
    } else {
        parts.join(": ")
    }
}

/// wasmtime's message when a copy out of the guest exceeds the hostcall fuel.
fn is_transfer_limit(error: &wasmtime::Error) -> bool {
    error
        .chain()
        .any(|c| c.to_string().contains("fuel allocated for hostcalls"))
}

/// Why a sandboxed call did not return normally.
fn classify_failure(
    store: &Store<TaskState>,
    error: Option<wasmtime::Error>,
    timeout: Duration,
    transfer_limit: usize,
    call: Call,
) -> TaskOutcome {
    let state = store.data();
    let what = call.name();
    let timed_out = state.timed_out
        || error
            .as_ref()
            .is_some_and(|e| matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)));
    if error.is_none() || timed_out {
        return TaskOutcome::failed(
            error_code::TIMEOUT,
            format!(
                "{what} exceeded its time limit of {} and was stopped",
                fmt_duration(timeout)
            ),
        );
    }
    if state.limiter.exceeded {
        return TaskOutcome::failed(
            error_code::RESOURCE_EXHAUSTED,
            format!(
                "{what} exceeded its memory limit of {} MiB and was stopped",
                state.limiter.limit() >> 20
            ),
        );
    }
    let error = error.unwrap_or_else(|| wasmtime::format_err!("unknown error"));
    if is_transfer_limit(&error) {
        let answer = match call {
            Call::Task => "its result (or one log or progress message)",
            Call::Describe => "its description",
        };
        return TaskOutcome::failed(
            error_code::RESOURCE_EXHAUSTED,
            format!(
                "{what} tried to hand the host more than {transfer_limit} bytes at once in {answer}; \
                 the limit is {transfer_limit} bytes"
            ),
        );
    }
    let cause = match error.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => error_text(&error),
    };
    if cause.contains("handle limit exceeded") {
        return TaskOutcome::failed(
            error_code::RESOURCE_EXHAUSTED,
            format!(
                "{what} exceeded the limit of {} live handles and was stopped: {cause}",
                limits::MAX_HANDLES
            ),
        );
    }
    // The guest's last words (e.g. a Rust panic message) say why it crashed.
    let stderr = String::from_utf8_lossy(&state.stderr.contents()).to_string();
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("note: run with"))
        .collect();
    let last_words = lines[lines.len().saturating_sub(2)..].join(" ");
    let message = if last_words.is_empty() {
        format!("plugin crashed: {cause}")
    } else {
        format!(
            "plugin crashed: {cause}: {}",
            for_log(&state.redact(&last_words))
        )
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

/// Logs what the guest wrote to stdout/stderr, tagged with the task id; long
/// lines are cut, and output beyond the capture buffer is counted.
fn log_captured_output(store: &Store<TaskState>) {
    let state = store.data();
    for (stream, pipe) in [("stdout", &state.stdout), ("stderr", &state.stderr)] {
        let bytes = pipe.contents();
        let text = String::from_utf8_lossy(&bytes);
        let mut lines = text.lines().filter(|l| !l.is_empty());
        for line in lines.by_ref().take(MAX_LOGGED_OUTPUT_LINES) {
            tracing::info!(task_id = %state.task_id, stream, "plugin {stream}: {}", for_log(&state.redact(line)));
        }
        let more = lines.count();
        if more > 0 {
            tracing::info!(task_id = %state.task_id, stream, "plugin {stream}: {more} more line(s) not logged");
        }
        let dropped = pipe.dropped();
        if dropped > 0 {
            tracing::warn!(
                task_id = %state.task_id,
                stream,
                "plugin wrote {dropped} bytes to {stream} beyond the {} bytes kept per task; they were dropped",
                bytes.len()
            );
        }
    }
}

/// Runs `task` in a fresh instance of `pre` under `grants`, and turns every
/// way it can end into a [`TaskOutcome`]; stopped (its store dropped) as
/// soon as the options' token fires: [`TaskOutcome::Cancelled`].
pub(crate) async fn run(
    engine: &Sandbox,
    pre: &TaskPluginPre<TaskState>,
    task: &Task,
    options: RunOptions,
    grants: &Grants,
) -> TaskOutcome {
    let reports = Reports {
        progress: options.progress.unwrap_or_else(|| watch::channel(None).0),
        events: options.events,
    };
    let cancel = options.cancel.unwrap_or_default();
    let timeout = grants.timeout.unwrap_or(engine.config.task_timeout);
    let transfer_limit = engine.config.max_result_bytes;
    let permit = tokio::select! {
        p = engine.instance_permits.acquire() => p,
        _ = cancel.cancelled() => return TaskOutcome::Cancelled,
    };
    let Ok(_permit) = permit else {
        return TaskOutcome::failed(error_code::TRANSIENT, "the sandbox is shutting down");
    };
    let mut store = new_store(
        engine,
        &task.task_id,
        timeout,
        transfer_limit,
        reports,
        grants,
    );
    if let Some((objects, written)) = options.objects {
        store.data_mut().objects = Some(super::objects::ObjectAccess::new(
            objects,
            task.job_id.clone(),
            grants.objects.clone(),
            written,
        ));
    }
    let call = async {
        let started = std::time::Instant::now();
        let instance = pre.instantiate_async(&mut store).await?;
        crate::metrics::histogram!("worker_sandbox_instantiate_seconds")
            .record(started.elapsed().as_secs_f64());
        instance
            .taskworker_plugin_handler()
            .call_execute(&mut store, task)
            .await
    };
    // The epoch callback stops running guest code; this also bounds a guest
    // that is blocked in a host call (e.g. sleeping).
    let result = tokio::select! {
        r = tokio::time::timeout(timeout, call) => r,
        _ = cancel.cancelled() => {
            // Dropping the call future and the store stops the guest.
            log_captured_output(&store);
            return TaskOutcome::Cancelled;
        }
    };
    log_captured_output(&store);
    let output = match result {
        Ok(Ok(output)) => output,
        Ok(Err(trap)) => {
            return classify_failure(&store, Some(trap), timeout, transfer_limit, Call::Task);
        }
        Err(_elapsed) => {
            return classify_failure(&store, None, timeout, transfer_limit, Call::Task);
        }
    };
    drop(store);
    match output {
        Ok(output) if output.data.len() <= crate::limits::INLINE_JSON_BYTES => {
            completed(output.status, &output.data)
        }
        Ok(output) => {
            // Parsing up to `max_result_bytes` of JSON is CPU work: keep it off
            // the runtime threads the task channel and polls share.
            tokio::task::spawn_blocking(move || completed(output.status, &output.data))
                .await
                .unwrap_or_else(|e| {
                    TaskOutcome::failed(
                        error_code::PERMANENT,
                        format!("result parsing failed: {e}"),
                    )
                })
        }
        Err(error) => TaskOutcome::Failed {
            code: code_of(error.kind).to_string(),
            message: grants.redact(&error.message),
            details: error.details.map(|d| grants.redact(&d)),
        },
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
    if !limits::is_status_name(&status) {
        return TaskOutcome::failed(
            error_code::CONTRACT_VIOLATION,
            format!(
                "plugin returned the status {:?} ({} bytes); a status is 1 to {} bytes of letters, digits, `_`, `-`, `.` or `:`",
                limits::clip(&status, 80),
                status.len(),
                limits::MAX_STATUS_NAME
            ),
        );
    }
    if let Err(e) = rxon::check_depth(data.as_bytes(), rxon::MAX_JSON_DEPTH) {
        return TaskOutcome::failed(
            error_code::CONTRACT_VIOLATION,
            format!("plugin result data: {e}"),
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

/// Asks a plugin for its skills, in a fresh instance bounded like a task and
/// allowed to hand the host at most [`limits::MAX_DESCRIBE_BYTES`].
pub async fn describe(
    engine: &Sandbox,
    pre: &TaskPluginPre<TaskState>,
) -> anyhow::Result<Vec<Skill>> {
    let timeout = engine.config.task_timeout.min(Duration::from_secs(10));
    let limit = limits::MAX_DESCRIBE_BYTES;
    let _permit = engine.instance_permits.acquire().await?;
    let mut store = new_store(
        engine,
        "describe",
        timeout,
        limit,
        Reports::none(),
        &Grants::default(),
    );
    let call = async {
        let instance = pre.instantiate_async(&mut store).await?;
        instance
            .taskworker_plugin_handler()
            .call_describe(&mut store)
            .await
    };
    let result = tokio::time::timeout(timeout, call).await;
    log_captured_output(&store);
    let error = match result {
        Ok(Ok(skills)) => return Ok(skills),
        Ok(Err(trap)) => Some(trap),
        Err(_) => None,
    };
    match classify_failure(&store, error, timeout, limit, Call::Describe) {
        TaskOutcome::Failed { message, .. } => anyhow::bail!("{message}"),
        TaskOutcome::Completed { .. } | TaskOutcome::Cancelled => {
            anyhow::bail!("describe() failed")
        }
    }
}
