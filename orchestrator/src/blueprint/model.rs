//! The blueprint file format (TOML), as written by users.
//!
//! ```toml
//! name = "test_flow"
//! api_endpoint = "/jobs/test"
//! api_version = "v1"
//!
//! [states.start]
//! start = true
//! dispatch.task = "echo_task"
//! # Each string is an expression over `initial`, `results` and `last`;
//! # numbers, booleans, arrays and tables are literals.
//! dispatch.params.message = "initial.message | default('Hello from Orchestrator!')"
//! dispatch.params.multiply = "initial.multiply | default(2)"
//! dispatch.on = { success = "completed", failure = "failed" }
//!
//! [states.completed]
//! end = "finished"
//!
//! [states.failed]
//! end = "failed"
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlueprintFile {
    pub name: String,
    /// Path under `/api/<version>`, e.g. `/jobs/test`. Absent: the
    /// blueprint is internal, started only as a child job (`run`).
    #[serde(default)]
    pub api_endpoint: Option<String>,
    /// e.g. `v1`; empty or absent mounts the endpoint at `/api<endpoint>`.
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// JSON Schema of a job's initial data (checked at create: 400).
    #[serde(default)]
    pub input_schema: Option<toml::Table>,
    /// JSON Schema of a finished job's result (checked at a `finished` end).
    #[serde(default)]
    pub output_schema: Option<toml::Table>,
    pub states: BTreeMap<String, StateFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    /// Marks the one start state.
    #[serde(default)]
    pub start: bool,
    /// Marks an end state: `finished` or `failed` is the job's final status.
    #[serde(default)]
    pub end: Option<String>,
    #[serde(default)]
    pub dispatch: Option<DispatchFile>,
    #[serde(default)]
    pub parallel: Option<ParallelFile>,
    /// One task per element of a list computed at run time.
    #[serde(default)]
    pub map: Option<MapFile>,
    /// Go to another state: the first rule whose `when` holds (or has none).
    #[serde(default)]
    pub goto: Option<Vec<GotoFile>>,
    /// Wait, costing no worker, then go on.
    #[serde(default)]
    pub sleep: Option<SleepFile>,
    /// Wait for a decision (approval) or a signal, or a timeout.
    #[serde(default)]
    pub wait: Option<WaitFile>,
    /// Start another blueprint as a child job and wait for its end.
    #[serde(default)]
    pub run: Option<RunFile>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchFile {
    /// Task type (skill name) a worker must offer.
    pub task: String,
    #[serde(default)]
    pub params: BTreeMap<String, toml::Value>,
    /// Result status → next state. `failure` is taken when the task fails
    /// for good (see docs/job-semantics.md).
    #[serde(default)]
    pub on: BTreeMap<String, String>,
    /// Worker event type → next state: an event the running task sends
    /// moves the job on before the task ends (its later result is stale).
    #[serde(default)]
    pub events: BTreeMap<String, String>,
    /// Seconds the task may wait for a worker before the job fails.
    #[serde(default)]
    pub dispatch_timeout: Option<f64>,
    /// Seconds a worker has to return the result once it took the task.
    #[serde(default)]
    pub result_timeout: Option<f64>,
    #[serde(default)]
    pub retry: Option<RetryFile>,
    /// The task's priority: a number, or an expression giving one.
    #[serde(default)]
    pub priority: Option<toml::Value>,
    /// What the worker that takes it must have (see engine/matching.rs).
    #[serde(default)]
    pub requires: Option<crate::engine::matching::Requirements>,
    /// At most `max` such tasks in flight per value of `key`.
    #[serde(default)]
    pub concurrency: Option<ConcurrencyFile>,
    /// At most `per_second` such tasks handed out per second per value of
    /// `key` (bursts of up to `burst`).
    #[serde(default)]
    pub rate: Option<RateFile>,
    /// Which waiting worker gets the task (see engine/strategy.rs).
    #[serde(default)]
    pub strategy: Option<String>,
}

/// `concurrency = { key = "<expr>", max = N }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyFile {
    /// Expression giving the key (e.g. `initial.customer`).
    pub key: String,
    pub max: u32,
}

/// `rate = { key = "<expr>", per_second = R, burst = B }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateFile {
    /// Expression giving the key (e.g. `initial.customer`).
    pub key: String,
    pub per_second: f64,
    /// Tasks that may go at once after a quiet spell (default 1).
    #[serde(default)]
    pub burst: Option<u32>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryFile {
    /// Attempts in all, the first included.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Delay before the first retry, doubled for each further one.
    #[serde(default)]
    pub initial_backoff_ms: Option<u64>,
    #[serde(default)]
    pub max_backoff_ms: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParallelFile {
    /// Branches, each a task; results are gathered under `results.<state>.<branch>`.
    pub branches: BTreeMap<String, BranchFile>,
    /// State after every branch succeeded.
    pub next: String,
    /// State after a branch failed for good; the job fails if absent.
    #[serde(default)]
    pub on_failure: Option<String>,
    /// The branches' priority: a number, or an expression giving one.
    #[serde(default)]
    pub priority: Option<toml::Value>,
    /// What the worker that takes a branch must have.
    #[serde(default)]
    pub requires: Option<crate::engine::matching::Requirements>,
    /// At most `max` such tasks in flight per value of `key`.
    #[serde(default)]
    pub concurrency: Option<ConcurrencyFile>,
    /// At most `per_second` such tasks handed out per second per value of
    /// `key` (bursts of up to `burst`).
    #[serde(default)]
    pub rate: Option<RateFile>,
    /// Which waiting worker gets the task (see engine/strategy.rs).
    #[serde(default)]
    pub strategy: Option<String>,
    #[serde(default)]
    pub retry: Option<RetryFile>,
    #[serde(default)]
    pub result_timeout: Option<f64>,
    #[serde(default)]
    pub dispatch_timeout: Option<f64>,
}

/// `map`: one task per element of a list an expression gives, at most
/// `max_in_flight` at a time; results in input order under
/// `results.<state>.items`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapFile {
    /// Expression giving the list, e.g. `initial.files`.
    pub over: String,
    /// Task type of every element's task.
    pub task: String,
    /// Params of each element's task; expressions also see `item` (the
    /// element) and `index` (its position, from 0).
    #[serde(default)]
    pub params: BTreeMap<String, toml::Value>,
    /// Most element tasks queued or running at once (default 10).
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// `fail_fast` (default: the first element that fails for good ends
    /// the map) or `continue` (every element runs; failures are listed).
    #[serde(default)]
    pub on_item_failure: Option<String>,
    /// State after the map (with `continue`, also when elements failed).
    pub next: String,
    /// State after an element failed for good under `fail_fast`; the job
    /// fails if absent.
    #[serde(default)]
    pub on_failure: Option<String>,
    /// Each element task's priority (sees `item` and `index`).
    #[serde(default)]
    pub priority: Option<toml::Value>,
    /// What the worker that takes an element task must have.
    #[serde(default)]
    pub requires: Option<crate::engine::matching::Requirements>,
    /// At most `max` such tasks in flight per value of `key`.
    #[serde(default)]
    pub concurrency: Option<ConcurrencyFile>,
    /// At most `per_second` such tasks handed out per second per value of
    /// `key` (bursts of up to `burst`).
    #[serde(default)]
    pub rate: Option<RateFile>,
    /// Which waiting worker gets the task (see engine/strategy.rs).
    #[serde(default)]
    pub strategy: Option<String>,
    #[serde(default)]
    pub retry: Option<RetryFile>,
    #[serde(default)]
    pub result_timeout: Option<f64>,
    #[serde(default)]
    pub dispatch_timeout: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchFile {
    pub task: String,
    #[serde(default)]
    pub params: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GotoFile {
    /// Condition over the job's data; absent means always.
    #[serde(default)]
    pub when: Option<String>,
    pub to: String,
}

/// `sleep = { seconds = …, next = "…" }` or `sleep = { until = …, next = "…" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepFile {
    /// How long: a number of seconds, or an expression giving one.
    #[serde(default)]
    pub seconds: Option<toml::Value>,
    /// Until when: an expression giving an RFC 3339 time.
    #[serde(default)]
    pub until: Option<String>,
    /// The state after the sleep.
    pub next: String,
}

/// `wait = { approval = true, on = { approved = "…", rejected = "…" },
/// timeout = 86400, on_timeout = "…" }`: the job waits (no worker) for a
/// decision or signal named in `on`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitFile {
    /// A human decides: status `waiting_for_human`, a single-use approval
    /// token, avtomatika's approval endpoint. Otherwise the job waits for a
    /// client's signal (`waiting_for_signal`).
    #[serde(default)]
    pub approval: bool,
    /// Decision or signal name → next state.
    pub on: BTreeMap<String, String>,
    /// Seconds to wait at most (then `on_timeout`).
    #[serde(default)]
    pub timeout: Option<f64>,
    #[serde(default)]
    pub on_timeout: Option<String>,
}

/// `run = { blueprint = "…", data = { … }, on = { success = "…", failure = "…" } }`:
/// a child job of another blueprint, the parent waiting for its end.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunFile {
    /// Name of the child's blueprint (internal ones included).
    pub blueprint: String,
    /// The child's initial data: expressions (strings) or literals.
    #[serde(default)]
    pub data: BTreeMap<String, toml::Value>,
    /// `success` (the child finished) and `failure` (it failed, was
    /// quarantined or cancelled) → next state; without `failure` the
    /// parent fails with the child.
    pub on: BTreeMap<String, String>,
}
