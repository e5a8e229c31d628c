//! What one task's `Store` holds.
//!
//! The WASI context grants nothing: no preopened directories, no environment
//! variables, no arguments, no network, no stdin. Stdout and stderr go to
//! bounded in-memory buffers ([`CappedOutput`]: output beyond the cap is
//! dropped, not an error) that the host logs, tagged with the task id, when
//! the task ends.

use std::time::Instant;

use tokio::sync::watch;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_config::WasiConfigVariables;

use super::bindings::{LogLevel, taskworker};
use super::output::CappedOutput;

/// Longest guest log message kept; longer ones are cut.
const MAX_LOG_MESSAGE: usize = rxon::text::MAX_LOGGED_TEXT;
/// Guest log lines emitted per task before the rest are dropped.
const MAX_LOG_LINES: u32 = 1000;

/// Latest progress a task reported: fraction in 0..=1 and a message.
pub type Progress = (f32, String);

/// An event a plugin emitted (`emit-event`), checked against the bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginEvent {
    pub event_type: String,
    pub payload: serde_json::Map<String, serde_json::Value>,
}

pub use crate::limits::{EVENT_BACKLOG, MAX_EVENT_PAYLOAD, MAX_EVENT_TYPE, MAX_EVENTS_PER_TASK};

/// Where a task's progress reports and events go.
pub struct Reports {
    pub progress: watch::Sender<Option<Progress>>,
    /// `None`: events are checked and dropped (no orchestrator to tell).
    pub events: Option<tokio::sync::mpsc::Sender<PluginEvent>>,
}

impl Reports {
    /// Reports that go nowhere.
    pub fn none() -> Self {
        Self {
            progress: watch::channel(None).0,
            events: None,
        }
    }
}

/// Store data of one task attempt.
pub struct TaskState {
    wasi: WasiCtx,
    pub(super) table: ResourceTable,
    /// The job's files, when this worker has a store (see [`super::objects`]).
    pub objects: Option<super::objects::ObjectAccess>,
    /// Enforces the memory cap and remembers whether it was hit.
    pub limiter: MemoryCap,
    /// Identifies the task in every log line the plugin causes.
    pub task_id: String,
    /// Where stdout/stderr go; read after the task.
    pub stdout: CappedOutput,
    pub stderr: CappedOutput,
    /// Progress reports and events, read by whoever forwards them to the
    /// orchestrator.
    pub reports: Reports,
    /// When the task must be done; checked at every epoch tick.
    pub deadline: Instant,
    /// Set when the epoch callback stopped the guest at its deadline.
    pub timed_out: bool,
    /// Config values the plugin was granted (`wasi:config/store`).
    pub config: WasiConfigVariables,
    /// Secret values, cut out of every line the host logs for this task.
    pub secrets: Vec<String>,
    http_ctx: wasmtime_wasi_http::WasiHttpCtx,
    /// Outbound HTTP: the plugin's grant (none: every request denied).
    http_hooks: super::http::OutboundHttp,
    log_lines: u32,
    events_sent: u32,
}

impl TaskState {
    pub fn new(
        task_id: String,
        deadline: Instant,
        memory_limit: usize,
        capture_bytes: usize,
        reports: Reports,
        grants: &crate::grants::Grants,
    ) -> Self {
        let stdout = CappedOutput::new(capture_bytes);
        let stderr = CappedOutput::new(capture_bytes);
        // Grants nothing but what the plugin's manifest was granted (see the
        // module docs and `crate::grants`).
        let mut builder = WasiCtx::builder();
        builder
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false);
        for (host, guest) in &grants.dirs {
            if let Err(e) = builder.preopened_dir(host, guest, FsPerms::ReadOnly) {
                tracing::warn!(task_id = %task_id, "cannot open {} for the plugin: {e}", host.display());
            }
        }
        let wasi = builder.build();
        Self {
            wasi,
            table: ResourceTable::new(),
            objects: None,
            limiter: MemoryCap::new(memory_limit),
            task_id: task_id.clone(),
            stdout,
            stderr,
            reports,
            deadline,
            timed_out: false,
            config: grants
                .config
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            secrets: grants.secrets.clone(),
            http_ctx: wasmtime_wasi_http::WasiHttpCtx::new(),
            http_hooks: super::http::OutboundHttp {
                grant: grants.http.clone(),
                task_id: task_id.clone(),
                plugin: grants.plugin.clone(),
                deadline,
                connections: std::sync::Arc::new(tokio::sync::Semaphore::new(
                    grants.http.as_ref().map_or(1, |h| h.max_connections),
                )),
            },
            log_lines: 0,
            events_sent: 0,
        }
    }
}

impl TaskState {
    /// `text` with the plugin's secret values cut out.
    pub fn redact(&self, text: &str) -> String {
        crate::grants::redact(&self.secrets, text)
    }
}

impl wasmtime_wasi_http::WasiHttpView for TaskState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http_ctx,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}

impl WasiView for TaskState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl taskworker::plugin::types::Host for TaskState {}

impl taskworker::plugin::host::Host for TaskState {
    fn log(&mut self, level: LogLevel, message: String) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES {
            if self.log_lines == MAX_LOG_LINES + 1 {
                tracing::warn!(task_id = %self.task_id, "plugin log limit reached; dropping further lines");
            }
            return;
        }
        let message = self.redact(truncate(&message, MAX_LOG_MESSAGE));
        let task_id = &self.task_id;
        match level {
            LogLevel::Trace => tracing::trace!(task_id, "plugin: {message}"),
            LogLevel::Debug => tracing::debug!(task_id, "plugin: {message}"),
            LogLevel::Info => tracing::info!(task_id, "plugin: {message}"),
            LogLevel::Warn => tracing::warn!(task_id, "plugin: {message}"),
            LogLevel::Error => tracing::error!(task_id, "plugin: {message}"),
        }
    }

    fn progress(&mut self, fraction: f32, message: String) {
        let fraction = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let message = truncate(&message, MAX_LOG_MESSAGE).to_string();
        self.reports
            .progress
            .send_replace(Some((fraction, message)));
    }

    fn emit_event(&mut self, event_type: String, payload: String) -> Result<(), String> {
        let event = check_event(event_type, &payload)?;
        if self.events_sent >= MAX_EVENTS_PER_TASK {
            return Err(format!(
                "a task may emit at most {MAX_EVENTS_PER_TASK} events (MAX_EVENTS_PER_TASK)"
            ));
        }
        if let Some(events) = &self.reports.events {
            events.try_send(event).map_err(|e| match e {
                tokio::sync::mpsc::error::TrySendError::Full(_) => format!(
                    "{EVENT_BACKLOG} events are still waiting to be sent (EVENT_BACKLOG); try again later"
                ),
                tokio::sync::mpsc::error::TrySendError::Closed(_) => {
                    "events are no longer delivered for this task".to_string()
                }
            })?;
        }
        self.events_sent += 1;
        tracing::debug!(task_id = %self.task_id, "plugin emitted an event");
        Ok(())
    }
}

/// An event as a plugin handed it, checked: a type name of at most
/// [`MAX_EVENT_TYPE`] bytes of `[A-Za-z0-9_.:-]`, not `progress`, and a
/// payload of at most [`MAX_EVENT_PAYLOAD`] bytes (checked before it is
/// parsed) that is a JSON object within the nesting bound.
pub fn check_event(event_type: String, payload: &str) -> Result<PluginEvent, String> {
    if event_type.is_empty() || event_type.len() > MAX_EVENT_TYPE {
        return Err(format!(
            "the event type must be 1 to {MAX_EVENT_TYPE} bytes (MAX_EVENT_TYPE)"
        ));
    }
    if !event_type
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c))
    {
        return Err("the event type may only hold letters, digits, `_`, `.`, `:` and `-`".into());
    }
    if event_type == rxon::EVENT_PROGRESS {
        return Err("`progress` is reserved: report progress with `progress`".into());
    }
    if payload.len() > MAX_EVENT_PAYLOAD {
        return Err(format!(
            "the event payload is {} bytes; at most {MAX_EVENT_PAYLOAD} are sent (MAX_EVENT_PAYLOAD)",
            payload.len()
        ));
    }
    rxon::check_depth(payload.as_bytes(), rxon::MAX_JSON_DEPTH)
        .map_err(|e| format!("the event payload: {e}"))?;
    let value: serde_json::Value =
        serde_json::from_str(payload).map_err(|e| format!("the event payload is not JSON: {e}"))?;
    let serde_json::Value::Object(payload) = value else {
        return Err("the event payload must be a JSON object".into());
    };
    Ok(PluginEvent {
        event_type,
        payload,
    })
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A [`ResourceLimiter`] that caps linear memory and records when a guest
/// asked for more, so an out-of-memory trap can be named as such.
pub struct MemoryCap {
    limit: usize,
    /// True once a growth beyond `limit` was refused.
    pub exceeded: bool,
}

impl MemoryCap {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            exceeded: false,
        }
    }

    /// The cap, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; 100k entries is far beyond any
        // honest plugin and keeps a hostile one from eating host memory.
        if desired > 100_000 {
            self.exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }
}
