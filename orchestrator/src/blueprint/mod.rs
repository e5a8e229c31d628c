//! Declarative blueprints: loaded from TOML files, validated, compiled.
//!
//! - [`model`]: the file format.
//! - [`expr`]: expressions for params and conditions.
//! - this module: the validated, compiled [`Blueprint`] and the loader.

pub mod catalog;
pub mod contract;
pub mod expr;
pub mod model;
pub mod watch;

pub use catalog::Catalog;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use expr::{Expr, ParamValue};
use model::{BlueprintFile, RetryFile, StateFile};

/// Retry policy of a task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Most attempts a retry policy may allow.
const MAX_ATTEMPTS: u32 = 1000;

impl RetryPolicy {
    fn from_file(file: Option<RetryFile>) -> Result<Self, String> {
        let d = Self::default();
        let Some(f) = file else { return Ok(d) };
        let max_ms = (crate::secs::MAX_TIMEOUT_SECS * 1000.0) as u64;
        let ms = |v: Option<u64>, field: &str, default: Duration| match v {
            None => Ok(default),
            Some(ms) if ms <= max_ms => Ok(Duration::from_millis(ms)),
            Some(ms) => Err(format!(
                "'retry.{field}' must be at most {max_ms} ms (30 days); got {ms}"
            )),
        };
        let max_attempts = f.max_attempts.unwrap_or(d.max_attempts);
        if !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
            return Err(format!(
                "'retry.max_attempts' must be between 1 and {MAX_ATTEMPTS}; got {max_attempts}"
            ));
        }
        Ok(Self {
            max_attempts,
            initial_backoff: ms(
                f.initial_backoff_ms,
                "initial_backoff_ms",
                d.initial_backoff,
            )?,
            max_backoff: ms(f.max_backoff_ms, "max_backoff_ms", d.max_backoff)?,
        })
    }

    /// Delay before attempt `next_attempt` (2 = first retry).
    pub fn backoff(&self, next_attempt: u32) -> Duration {
        let exp = next_attempt.saturating_sub(2).min(30);
        self.initial_backoff
            .saturating_mul(1 << exp)
            .min(self.max_backoff)
    }
}

/// A task to dispatch: type, params, and its bounds.
#[derive(Debug)]
pub struct TaskSpec {
    pub task_type: String,
    pub params: BTreeMap<String, ParamValue>,
    pub dispatch_timeout: Option<Duration>,
    pub result_timeout: Option<Duration>,
    pub retry: RetryPolicy,
    /// The task's priority (else the job's `priority`, else 0).
    pub priority: Option<ParamValue>,
    /// What the worker that takes it must have.
    pub requires: Option<Arc<crate::engine::matching::Requirements>>,
    /// At most `max` tasks in flight per value of `key`.
    pub concurrency: Option<ConcurrencySpec>,
    /// At most `per_second` handed out per second per value of `key`.
    pub rate: Option<RateSpec>,
    /// Which waiting worker gets the task.
    pub strategy: Option<crate::engine::strategy::Strategy>,
}

#[derive(Debug)]
pub struct RateSpec {
    pub key: Expr,
    pub per_second: f64,
    pub burst: u32,
}

/// Highest `rate.per_second` (and lowest: one task a day).
pub const MAX_RATE: f64 = 100_000.0;
pub const MIN_RATE: f64 = 1.0 / 86_400.0;

fn compile_strategy(
    s: &Option<String>,
) -> Result<Option<crate::engine::strategy::Strategy>, String> {
    s.as_deref()
        .map(crate::engine::strategy::Strategy::parse)
        .transpose()
}

fn compile_rate(r: &Option<model::RateFile>) -> Result<Option<RateSpec>, String> {
    let Some(r) = r else { return Ok(None) };
    if !(MIN_RATE..=MAX_RATE).contains(&r.per_second) {
        return Err(format!(
            "rate.per_second must be from {MIN_RATE:.6} (one a day) to {MAX_RATE} (got {})",
            r.per_second
        ));
    }
    let burst = r.burst.unwrap_or(1);
    if burst == 0 || burst > MAX_CONCURRENCY {
        return Err(format!(
            "rate.burst must be from 1 to {MAX_CONCURRENCY} (got {burst})"
        ));
    }
    let key = Expr::compile(&r.key).map_err(|e| format!("rate.key: {e}"))?;
    Ok(Some(RateSpec {
        key,
        per_second: r.per_second,
        burst,
    }))
}

#[derive(Debug)]
pub struct ConcurrencySpec {
    pub key: Expr,
    pub max: u32,
}

/// Largest `concurrency.max`.
pub const MAX_CONCURRENCY: u32 = 100_000;

fn compile_concurrency(
    c: &Option<model::ConcurrencyFile>,
) -> Result<Option<ConcurrencySpec>, String> {
    let Some(c) = c else { return Ok(None) };
    if c.max == 0 || c.max > MAX_CONCURRENCY {
        return Err(format!(
            "concurrency.max must be from 1 to {MAX_CONCURRENCY} (got {})",
            c.max
        ));
    }
    let key = Expr::compile(&c.key).map_err(|e| format!("concurrency.key: {e}"))?;
    Ok(Some(ConcurrencySpec { key, max: c.max }))
}

fn compile_requires(
    r: &Option<crate::engine::matching::Requirements>,
) -> Result<Option<Arc<crate::engine::matching::Requirements>>, String> {
    let Some(r) = r else { return Ok(None) };
    r.validate()?;
    Ok(Some(Arc::new(r.clone())))
}

/// Largest priority, either way.
pub const MAX_PRIORITY: f64 = 1000.0;

fn compile_priority(v: &Option<toml::Value>) -> Result<Option<ParamValue>, String> {
    let Some(v) = v else { return Ok(None) };
    let p = ParamValue::from_toml(v).map_err(|e| format!("priority: {e}"))?;
    if let ParamValue::Literal(n) = &p
        && !n.as_f64().is_some_and(|n| n.abs() <= MAX_PRIORITY)
    {
        return Err(format!(
            "priority must be a number from -{MAX_PRIORITY} to {MAX_PRIORITY} or an expression giving one"
        ));
    }
    Ok(Some(p))
}

/// What a state does.
#[derive(Debug)]
pub enum Action {
    /// The job ends here with status `finished` (`true`) or `failed`.
    End {
        finished: bool,
    },
    Dispatch {
        task: TaskSpec,
        /// Result status → next state.
        on: BTreeMap<String, String>,
        /// Worker event type → next state.
        events: BTreeMap<String, String>,
    },
    Parallel {
        branches: BTreeMap<String, TaskSpec>,
        next: String,
        on_failure: Option<String>,
    },
    /// One task per element of the list `over` gives (see [`MapSpec`]).
    Map(MapSpec),
    Goto(Vec<(Option<Expr>, String)>),
    /// Wait for `seconds` (a number, or an expression giving one) or
    /// `until` a time (an expression giving RFC 3339), then go to `next`.
    /// Durable: a timer, no worker.
    Sleep {
        wait: SleepFor,
        next: String,
    },
    /// Wait for a decision or signal named in `on`, or `timeout`.
    Wait(WaitSpec),
    /// Start a child job and wait for its end.
    Run(RunSpec),
}

impl Action {
    /// Whether a task of this action names a dispatch `strategy`.
    pub fn uses_strategy(&self) -> bool {
        match self {
            Action::Dispatch { task, .. } => task.strategy.is_some(),
            Action::Parallel { branches, .. } => branches.values().any(|t| t.strategy.is_some()),
            Action::Map(m) => m.task.strategy.is_some(),
            _ => false,
        }
    }
}

/// A `run` state: a child job of another blueprint.
#[derive(Debug)]
pub struct RunSpec {
    pub blueprint: String,
    /// The child's initial data.
    pub data: BTreeMap<String, ParamValue>,
    /// `success` → state, and `failure` → state if given.
    pub on: BTreeMap<String, String>,
}

/// A `wait` state.
#[derive(Debug)]
pub struct WaitSpec {
    /// A human decides (`waiting_for_human`, approval token), or a client
    /// signals (`waiting_for_signal`).
    pub approval: bool,
    /// Decision or signal name → next state.
    pub on: BTreeMap<String, String>,
    /// How long at most, and where to go then.
    pub timeout: Option<(Duration, String)>,
}

/// Default of `map.max_in_flight`.
pub const DEFAULT_MAP_IN_FLIGHT: u32 = 10;
/// Largest `map.max_in_flight`.
pub const MAX_MAP_IN_FLIGHT: u32 = 1000;

/// A `map` state: one task per element of a list.
#[derive(Debug)]
pub struct MapSpec {
    /// Gives the list.
    pub over: Expr,
    /// Each element's task; its params see `item` and `index`.
    pub task: TaskSpec,
    pub max_in_flight: u32,
    /// The first element failing for good ends the map (else all run).
    pub fail_fast: bool,
    pub next: String,
    pub on_failure: Option<String>,
}

/// How long a `sleep` state waits.
#[derive(Debug)]
pub enum SleepFor {
    Seconds(ParamValue),
    Until(Expr),
}

#[derive(Debug)]
pub struct State {
    pub name: String,
    pub action: Action,
}

#[derive(Debug)]
pub struct Blueprint {
    pub name: String,
    /// Full path of the create-job endpoint, e.g. `/api/v1/jobs/test`;
    /// `None` for an internal blueprint (started only as a child job).
    pub create_path: Option<String>,
    pub api_version: Option<String>,
    pub start: String,
    pub states: BTreeMap<String, State>,
    /// Its input and output schemas, if it declares them.
    pub contract: contract::Contract,
    /// Where it was loaded from (for messages).
    pub source: String,
    /// Its number among the versions of its name (1, 2, …; 0 until numbered).
    pub version: u32,
    /// The TOML it was parsed from.
    pub text: String,
    /// `file:<path>` or `api:<client>`.
    pub origin: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl Blueprint {
    pub fn state(&self, name: &str) -> Option<&State> {
        self.states.get(name)
    }

    /// `POST <path>`, or `internal` for a blueprint without an endpoint.
    pub fn endpoint_text(&self) -> String {
        match &self.create_path {
            Some(path) => format!("POST {path}"),
            None => "internal: started only as a child job".into(),
        }
    }

    /// The blueprint as a graph, for drawing: each state with what it does,
    /// and each arrow with what takes it.
    pub fn graph(&self) -> serde_json::Value {
        let nodes: Vec<serde_json::Value> = self
            .states
            .values()
            .map(|s| {
                let (kind, detail) = match &s.action {
                    Action::End { finished: true } => ("end", "finished".to_string()),
                    Action::End { finished: false } => ("end", "failed".to_string()),
                    Action::Dispatch { task, .. } => ("dispatch", task.task_type.clone()),
                    Action::Parallel { branches, .. } => (
                        "parallel",
                        branches
                            .values()
                            .map(|t| t.task_type.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    ),
                    Action::Map(m) => (
                        "map",
                        format!("{} over {}", m.task.task_type, m.over.source()),
                    ),
                    Action::Goto(_) => ("goto", String::new()),
                    Action::Run(r) => ("run", r.blueprint.clone()),
                    Action::Wait(w) => (
                        if w.approval { "approval" } else { "wait" },
                        w.on.keys().cloned().collect::<Vec<_>>().join(", "),
                    ),
                    Action::Sleep { wait, .. } => (
                        "sleep",
                        match wait {
                            SleepFor::Seconds(ParamValue::Literal(v)) => format!("{v} s"),
                            SleepFor::Seconds(ParamValue::Expr(e)) => format!("{} s", e.source()),
                            SleepFor::Until(e) => format!("until {}", e.source()),
                        },
                    ),
                };
                serde_json::json!({"name": s.name, "kind": kind, "detail": detail,
                                   "start": s.name == self.start})
            })
            .collect();
        let mut edges = Vec::new();
        let mut edge = |from: &str, to: &str, on: String| {
            edges.push(serde_json::json!({"from": from, "to": to, "on": on}));
        };
        for s in self.states.values() {
            match &s.action {
                Action::End { .. } => {}
                Action::Dispatch { on, events, .. } => {
                    for (status, to) in on {
                        edge(&s.name, to, status.clone());
                    }
                    for (name, to) in events {
                        edge(&s.name, to, format!("event {name}"));
                    }
                }
                Action::Parallel {
                    next, on_failure, ..
                } => {
                    edge(&s.name, next, "all succeeded".into());
                    if let Some(to) = on_failure {
                        edge(&s.name, to, "failure".into());
                    }
                }
                Action::Map(m) => {
                    edge(&s.name, &m.next, "all done".into());
                    if let Some(to) = &m.on_failure {
                        edge(&s.name, to, "failure".into());
                    }
                }
                Action::Goto(branches) => {
                    for (when, to) in branches {
                        let on = when
                            .as_ref()
                            .map_or_else(|| "otherwise".to_string(), |e| e.source().to_string());
                        edge(&s.name, to, on);
                    }
                }
                Action::Sleep { next, .. } => edge(&s.name, next, "woken".into()),
                Action::Run(r) => {
                    for (status, to) in &r.on {
                        edge(&s.name, to, format!("child {status}"));
                    }
                }
                Action::Wait(w) => {
                    for (name, to) in &w.on {
                        edge(&s.name, to, name.clone());
                    }
                    if let Some((_, to)) = &w.timeout {
                        edge(&s.name, to, "timeout".into());
                    }
                }
            }
        }
        serde_json::json!({"nodes": nodes, "edges": edges})
    }

    /// Every task type this blueprint may dispatch.
    pub fn task_types(&self) -> BTreeSet<&str> {
        let mut out = BTreeSet::new();
        for state in self.states.values() {
            match &state.action {
                Action::Dispatch { task, .. } => {
                    out.insert(task.task_type.as_str());
                }
                Action::Parallel { branches, .. } => {
                    out.extend(branches.values().map(|t| t.task_type.as_str()))
                }
                Action::Map(m) => {
                    out.insert(m.task.task_type.as_str());
                }
                _ => {}
            }
        }
        out
    }
}

/// A TOML error with the line it is on, so the field is named.
fn toml_problem(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
            format!(
                "line {line_no} (`{}`): {}",
                rxon::text::clip(line, 120),
                e.message()
            )
        }
        None => e.message().to_string(),
    }
}

/// A blueprint problem: which file, which state, what.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}: {problem}")]
pub struct BlueprintError {
    pub file: String,
    pub problem: String,
}

fn secs(v: Option<f64>, what: &str) -> Result<Option<Duration>, String> {
    v.map(|s| crate::secs::timeout(what, s))
        .transpose()
        .map_err(|e| e.to_string())
}

fn compile_params(
    params: &BTreeMap<String, toml::Value>,
) -> Result<BTreeMap<String, ParamValue>, String> {
    params
        .iter()
        .map(|(k, v)| {
            ParamValue::from_toml(v)
                .map(|p| (k.clone(), p))
                .map_err(|e| format!("param `{k}`: {e}"))
        })
        .collect()
}

fn compile_state(name: &str, file: &StateFile) -> Result<Action, String> {
    let kinds = [
        file.end.is_some(),
        file.dispatch.is_some(),
        file.parallel.is_some(),
        file.map.is_some(),
        file.goto.is_some(),
        file.sleep.is_some(),
        file.wait.is_some(),
        file.run.is_some(),
    ];
    match kinds.iter().filter(|k| **k).count() {
        0 => {
            return Err(
                "has no action: give it one of `end`, `dispatch`, `parallel`, `map`, `run`, `goto`, `sleep` or `wait`".into(),
            );
        }
        1 => {}
        _ => return Err(
            "has several actions; give it exactly one of `end`, `dispatch`, `parallel`, `map`, `run`, `goto`, `sleep` or `wait`"
                .into(),
        ),
    }
    if let Some(end) = &file.end {
        return match end.as_str() {
            "finished" => Ok(Action::End { finished: true }),
            "failed" => Ok(Action::End { finished: false }),
            other => Err(format!(
                "end must be \"finished\" or \"failed\", not {other:?}"
            )),
        };
    }
    if let Some(d) = &file.dispatch {
        if d.task.trim().is_empty() {
            return Err("dispatch.task is empty".into());
        }
        if d.on.is_empty() {
            return Err("dispatch has no transitions (`on`); add at least `success`".into());
        }
        if d.events.contains_key(rxon::EVENT_PROGRESS) {
            return Err("dispatch.events cannot name `progress` (a task's progress reports never move a job)".into());
        }
        return Ok(Action::Dispatch {
            task: TaskSpec {
                task_type: d.task.clone(),
                params: compile_params(&d.params)?,
                dispatch_timeout: secs(d.dispatch_timeout, "dispatch_timeout")?,
                result_timeout: secs(d.result_timeout, "result_timeout")?,
                retry: RetryPolicy::from_file(d.retry)?,
                priority: compile_priority(&d.priority)?,
                requires: compile_requires(&d.requires)?,
                concurrency: compile_concurrency(&d.concurrency)?,
                rate: compile_rate(&d.rate)?,
                strategy: compile_strategy(&d.strategy)?,
            },
            on: d.on.clone(),
            events: d.events.clone(),
        });
    }
    if let Some(p) = &file.parallel {
        if p.branches.is_empty() {
            return Err("parallel has no branches".into());
        }
        let mut branches = BTreeMap::new();
        for (branch, b) in &p.branches {
            branches.insert(
                branch.clone(),
                TaskSpec {
                    task_type: b.task.clone(),
                    params: compile_params(&b.params)
                        .map_err(|e| format!("branch `{branch}`: {e}"))?,
                    dispatch_timeout: secs(p.dispatch_timeout, "dispatch_timeout")?,
                    result_timeout: secs(p.result_timeout, "result_timeout")?,
                    retry: RetryPolicy::from_file(p.retry)?,
                    priority: compile_priority(&p.priority)?,
                    requires: compile_requires(&p.requires)?,
                    concurrency: compile_concurrency(&p.concurrency)?,
                    rate: compile_rate(&p.rate)?,
                    strategy: compile_strategy(&p.strategy)?,
                },
            );
        }
        return Ok(Action::Parallel {
            branches,
            next: p.next.clone(),
            on_failure: p.on_failure.clone(),
        });
    }
    if let Some(m) = &file.map {
        return compile_map(m).map(Action::Map);
    }
    if let Some(w) = &file.wait {
        return compile_wait(w).map(Action::Wait);
    }
    if let Some(r) = &file.run {
        if r.blueprint.trim().is_empty() {
            return Err("run.blueprint is empty".into());
        }
        if !r.on.contains_key("success") {
            return Err("run has no `success` transition (`on`)".into());
        }
        if let Some(bad) = r.on.keys().find(|k| *k != "success" && *k != "failure") {
            return Err(format!(
                "run.on may only name `success` and `failure`, not {bad:?}"
            ));
        }
        return Ok(Action::Run(RunSpec {
            blueprint: r.blueprint.clone(),
            data: compile_params(&r.data).map_err(|e| format!("run.data: {e}"))?,
            on: r.on.clone(),
        }));
    }
    if let Some(sleep) = &file.sleep {
        let wait = match (&sleep.seconds, &sleep.until) {
            (Some(seconds), None) => {
                let seconds = ParamValue::from_toml(seconds)?;
                if let ParamValue::Literal(v) = &seconds {
                    let n = v
                        .as_f64()
                        .ok_or("sleep.seconds must be a number or an expression")?;
                    crate::secs::timeout("sleep.seconds", n).map_err(|e| e.to_string())?;
                }
                SleepFor::Seconds(seconds)
            }
            (None, Some(until)) => SleepFor::Until(Expr::compile(until)?),
            _ => return Err("sleep needs exactly one of `seconds` or `until`".into()),
        };
        return Ok(Action::Sleep {
            wait,
            next: sleep.next.clone(),
        });
    }
    let rules = file.goto.as_deref().unwrap_or_default();
    if rules.is_empty() {
        return Err("goto has no rules".into());
    }
    let mut out = Vec::new();
    for rule in rules {
        let when = rule.when.as_deref().map(Expr::compile).transpose()?;
        out.push((when, rule.to.clone()));
    }
    let _ = name;
    Ok(Action::Goto(out))
}

/// Longest decision or signal name.
pub const MAX_SIGNAL_NAME: usize = 64;

/// Whether `name` may name a decision or signal: 1 to [`MAX_SIGNAL_NAME`]
/// bytes of letters, digits, `_`, `.` and `-`.
pub fn signal_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SIGNAL_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn compile_wait(w: &model::WaitFile) -> Result<WaitSpec, String> {
    if w.on.is_empty() {
        return Err("wait has no decisions or signals (`on`)".into());
    }
    if let Some(bad) = w.on.keys().find(|k| !signal_name_ok(k)) {
        return Err(format!(
            "wait.on name {bad:?} must be 1 to {MAX_SIGNAL_NAME} letters, digits, `_`, `.` or `-`"
        ));
    }
    let timeout = match (w.timeout, &w.on_timeout) {
        (None, None) => None,
        (Some(secs), Some(to)) => Some((
            crate::secs::timeout("wait.timeout", secs).map_err(|e| e.to_string())?,
            to.clone(),
        )),
        _ => return Err("wait.timeout and wait.on_timeout go together".into()),
    };
    Ok(WaitSpec {
        approval: w.approval,
        on: w.on.clone(),
        timeout,
    })
}

fn compile_map(m: &model::MapFile) -> Result<MapSpec, String> {
    if m.task.trim().is_empty() {
        return Err("map.task is empty".into());
    }
    let max_in_flight = m.max_in_flight.unwrap_or(DEFAULT_MAP_IN_FLIGHT);
    if !(1..=MAX_MAP_IN_FLIGHT).contains(&max_in_flight) {
        return Err(format!(
            "map.max_in_flight must be between 1 and {MAX_MAP_IN_FLIGHT}; got {max_in_flight}"
        ));
    }
    let fail_fast = match m.on_item_failure.as_deref() {
        None | Some("fail_fast") => true,
        Some("continue") => false,
        Some(other) => {
            return Err(format!(
                "map.on_item_failure must be \"fail_fast\" or \"continue\", not {other:?}"
            ));
        }
    };
    Ok(MapSpec {
        over: Expr::compile(&m.over).map_err(|e| format!("map.over: {e}"))?,
        task: TaskSpec {
            task_type: m.task.clone(),
            params: compile_params(&m.params)?,
            dispatch_timeout: secs(m.dispatch_timeout, "dispatch_timeout")?,
            result_timeout: secs(m.result_timeout, "result_timeout")?,
            retry: RetryPolicy::from_file(m.retry)?,
            priority: compile_priority(&m.priority)?,
            requires: compile_requires(&m.requires)?,
            concurrency: compile_concurrency(&m.concurrency)?,
            rate: compile_rate(&m.rate)?,
            strategy: compile_strategy(&m.strategy)?,
        },
        max_in_flight,
        fail_fast,
        next: m.next.clone(),
        on_failure: m.on_failure.clone(),
    })
}

/// Parses and validates one blueprint; `source` names it in errors.
pub fn parse(source: &str, text: &str) -> Result<Blueprint, BlueprintError> {
    let err = |problem: String| BlueprintError {
        file: source.to_string(),
        problem,
    };
    if text.len() > catalog::MAX_BLUEPRINT_BYTES {
        return Err(err(format!(
            "the blueprint is {} bytes; at most {} are accepted (MAX_BLUEPRINT_BYTES)",
            text.len(),
            catalog::MAX_BLUEPRINT_BYTES
        )));
    }
    let file: BlueprintFile = toml::from_str(text)
        .map_err(|e| err(format!("not a valid blueprint: {}", toml_problem(text, &e))))?;
    if file.name.trim().is_empty() {
        return Err(err("`name` is empty".into()));
    }
    if let Some(endpoint) = &file.api_endpoint
        && (!endpoint.starts_with('/') || endpoint.len() < 2 || endpoint.contains(['{', '}', '*']))
    {
        return Err(err(format!(
            "api_endpoint {endpoint:?} must be a plain path starting with `/`"
        )));
    }
    let version = file.api_version.clone().filter(|v| !v.is_empty());
    if let Some(v) = &version
        && !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
    {
        return Err(err(format!(
            "api_version {v:?} may only hold letters, digits, `.`, `_` and `-`"
        )));
    }
    let starts: Vec<&String> = file
        .states
        .iter()
        .filter(|(_, s)| s.start)
        .map(|(n, _)| n)
        .collect();
    match starts.as_slice() {
        [] => {
            return Err(err(
                "no start state: mark one state with `start = true`".into()
            ));
        }
        [_] => {}
        many => {
            let names: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
            return Err(err(format!(
                "several start states ({}); mark exactly one",
                names.join(", ")
            )));
        }
    }
    let mut states = BTreeMap::new();
    for (name, state) in &file.states {
        let action = compile_state(name, state)
            .map_err(|p| err(format!("state `{name}` {p}").replace("` has", "` has")))?;
        states.insert(
            name.clone(),
            State {
                name: name.clone(),
                action,
            },
        );
    }
    if !states
        .values()
        .any(|s| matches!(s.action, Action::End { .. }))
    {
        return Err(err(
            "no end state: add a state with `end = \"finished\"` or `end = \"failed\"`".into(),
        ));
    }
    for (name, state) in &states {
        let targets: Vec<(String, &String)> = match &state.action {
            Action::Dispatch { on, events, .. } => on
                .iter()
                .map(|(k, v)| (format!("transition `{k}`"), v))
                .chain(events.iter().map(|(k, v)| (format!("event `{k}`"), v)))
                .collect(),
            Action::Parallel {
                next, on_failure, ..
            } => {
                let mut t = vec![("`next`".to_string(), next)];
                if let Some(f) = on_failure {
                    t.push(("`on_failure`".to_string(), f));
                }
                t
            }
            Action::Goto(rules) => rules
                .iter()
                .map(|(_, to)| ("goto".to_string(), to))
                .collect(),
            Action::Map(m) => {
                let mut t = vec![("map `next`".to_string(), &m.next)];
                if let Some(f) = &m.on_failure {
                    t.push(("map `on_failure`".to_string(), f));
                }
                t
            }
            Action::Sleep { next, .. } => vec![("sleep `next`".to_string(), next)],
            Action::Run(r) => {
                r.on.iter()
                    .map(|(k, v)| (format!("run `{k}`"), v))
                    .collect()
            }
            Action::Wait(w) => {
                w.on.iter()
                    .map(|(k, v)| (format!("wait `{k}`"), v))
                    .chain(
                        w.timeout
                            .iter()
                            .map(|(_, to)| ("wait `on_timeout`".to_string(), to)),
                    )
                    .collect()
            }
            Action::End { .. } => vec![],
        };
        for (what, target) in targets {
            if !states.contains_key(target) {
                return Err(err(format!(
                    "state `{name}`: {what} goes to unknown state `{target}`"
                )));
            }
        }
    }
    let create_path = file.api_endpoint.as_ref().map(|endpoint| match &version {
        Some(v) => format!("/api/{v}{endpoint}"),
        None => format!("/api{endpoint}"),
    });
    let schema = |what: &str, table: &Option<toml::Table>| {
        table
            .as_ref()
            .map(|t| contract::Schema::compile(what, t))
            .transpose()
            .map_err(err)
    };
    let contract = contract::Contract {
        input: schema("input_schema", &file.input_schema)?,
        output: schema("output_schema", &file.output_schema)?,
    };
    Ok(Blueprint {
        name: file.name,
        create_path,
        api_version: version,
        start: starts[0].clone(),
        states,
        contract,
        source: source.to_string(),
        version: 0,
        text: text.to_string(),
        origin: source.to_string(),
        created_at: chrono::Utc::now(),
    })
}

/// A blueprint file's text, refused unread past [`catalog::MAX_BLUEPRINT_BYTES`].
pub fn read_bounded(path: &Path) -> Result<String, BlueprintError> {
    use std::io::Read;
    let err = |problem: String| BlueprintError {
        file: path.display().to_string(),
        problem,
    };
    let file = std::fs::File::open(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let mut text = String::new();
    file.take(catalog::MAX_BLUEPRINT_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| err(format!("cannot read: {e}")))?;
    if text.len() > catalog::MAX_BLUEPRINT_BYTES {
        return Err(err(format!(
            "larger than {} bytes (MAX_BLUEPRINT_BYTES)",
            catalog::MAX_BLUEPRINT_BYTES
        )));
    }
    Ok(text)
}

/// Loads every `*.toml` in `dir`; any broken blueprint is an error naming it.
pub fn load_dir(dir: &Path) -> Result<Vec<Blueprint>, BlueprintError> {
    let dir_err = |problem: String| BlueprintError {
        file: dir.display().to_string(),
        problem,
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| dir_err(format!("cannot read the blueprints directory: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let mut out: Vec<Blueprint> = Vec::new();
    for path in files {
        let source = path.display().to_string();
        let text = read_bounded(&path)?;
        let mut bp = parse(&source, &text)?;
        bp.origin = format!("file:{source}");
        if let Some(other) = out.iter().find(|b| {
            b.name == bp.name || (b.create_path.is_some() && b.create_path == bp.create_path)
        }) {
            return Err(BlueprintError {
                file: source,
                problem: format!(
                    "blueprint `{}` ({}) clashes with `{}` in {}: names and endpoints must be unique",
                    bp.name,
                    bp.create_path.as_deref().unwrap_or("internal"),
                    other.name,
                    other.source
                ),
            });
        }
        out.push(bp);
    }
    Ok(out)
}
