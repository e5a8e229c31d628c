//! What happens to a job on each event: creation, a worker taking a task, a
//! result, a failure, a timer. Every function runs under the engine lock and
//! queues its storage writes in `st.outbox`.
//!
//! - [`dispatch`]: queues and handing tasks out;
//! - [`results`]: results, failures, retries;
//! - [`timers`]: timeouts, worker expiry, recovery;
//! - [`workers`]: registration, heartbeats, events, cancel.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rxon::error_code;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::time::Instant;
use uuid::Uuid;

use super::persist::PersistMsg;
use super::workers::{Held, WorkerRecord};
use super::{
    EngineError, EngineState, EventKind, NewJob, Queued, Shared, TaskStop, Timer, event, job_write,
    task_event,
};
use crate::blueprint::{Action, Blueprint, TaskSpec};
use crate::job::{Job, JobError, JobEvent, JobStatus, Object, StateVisit, TaskRecord};

mod children;
mod dispatch;
mod map;
mod results;
mod timers;
mod wait;
mod workers;

pub(crate) use children::{
    arm_child_ended, cancel_child_of, cancel_with_parent, child_ended, start_child, tell_parent,
};
pub(crate) use dispatch::*;
pub(crate) use map::*;
pub(crate) use results::*;
pub(crate) use timers::*;
pub use wait::{Signal, SignalAuth};
pub(crate) use wait::{is_waiting, signal, start_wait, wait_timed_out};
pub(crate) use workers::*;

/// Error codes the orchestrator itself assigns.
pub mod own_code {
    pub const DISPATCH_TIMEOUT: &str = "DISPATCH_TIMEOUT";
    pub const UNHANDLED_STATUS: &str = "UNHANDLED_STATUS";
    pub const BLUEPRINT_ERROR: &str = "BLUEPRINT_ERROR";
    pub const CANCELLED: &str = "CANCELLED";
    /// A stored job that cannot run (out-of-range values, unreadable).
    pub const INVALID_JOB: &str = "INVALID_JOB";
    /// The job's `policy.allowed_skills` does not allow a task its
    /// blueprint dispatches.
    pub const POLICY_VIOLATION: &str = "POLICY_VIOLATION";
    /// A `map` state's list or its gathered results are larger than the
    /// configured bound (`max_map_items`, `max_map_result_bytes`).
    pub const MAP_LIMIT: &str = "MAP_LIMIT_EXCEEDED";
    /// A `run` state would start a child deeper than `max_job_depth`.
    pub const DEPTH_LIMIT: &str = "DEPTH_LIMIT_EXCEEDED";
    /// A child job (a `run` state's) failed, was quarantined or cancelled.
    pub const CHILD_FAILED: &str = "CHILD_JOB_FAILED";
}

/// Why the job's policy forbids dispatching `task_type`, if it does.
fn forbidden(job: &Job, task_type: &str) -> Option<String> {
    let allowed = job.options.allowed_skills()?;
    (!allowed.contains(&task_type)).then(|| {
        format!(
            "state {} dispatches task type {task_type}, which the job's policy.allowed_skills ({}) does not allow",
            job.current_state,
            allowed.join(", ")
        )
    })
}

pub(crate) fn new_task_id() -> String {
    format!("task-{}", Uuid::new_v4())
}

pub(crate) fn commit(
    st: &mut EngineState,
    job: &mut Job,
    events: Vec<JobEvent>,
    ack: Option<oneshot::Sender<Result<(), String>>>,
) {
    let write = job_write(job, events);
    st.outbox.push(PersistMsg {
        write: Some(write),
        webhook_done: None,
        ack,
    });
}

/// Takes a job out of the map to change it; put it back with [`put`].
pub(crate) fn take(st: &mut EngineState, id: Uuid) -> Option<Box<Job>> {
    st.jobs.remove(&id)
}

pub(crate) fn put(st: &mut EngineState, job: impl Into<Box<Job>>) {
    let mut job = job.into();
    // Active jobs per owner (`max_active_jobs_per_client`).
    if job.status.is_terminal() == job.counted_active {
        job.counted_active = !job.counted_active;
        let n = st.active_by_owner.entry(job.owner.clone()).or_default();
        if job.counted_active {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.active_by_owner.remove(&job.owner);
            }
        }
    }
    if job.status.is_terminal() {
        if job.parent.is_some() && !job.parent_told {
            tell_parent(st, &mut job);
            // Stored with the job change that ended it, as the webhook is.
            with_end_write(st, &mut job, |w| w.job.parent_told = true);
        }
        if let Some(waiters) = st.job_waiters.remove(&job.id) {
            waiters.notify_waiters();
        }
        if let (Some(url), false) = (&job.webhook_url, job.webhook_sent) {
            let hook = super::webhook::Webhook::for_job(url, &job);
            // Stored with the job change that ended the job (its write is
            // still in the outbox), so a restart cannot lose it.
            let pending = hook.pending();
            with_end_write(st, &mut job, |w| w.webhook = Some(pending));
            st.webhooks.push(hook);
            job.webhook_sent = true;
        }
        if !job.retired {
            job.retired = true;
            st.retired.push_back(job.id);
        }
    }
    st.jobs.insert(job.id, job);
    // Ended jobs stay in memory for a while (fast reads), then only in storage.
    while st.retired.len() > st.keep_finished {
        let Some(old) = st.retired.pop_front() else {
            break;
        };
        if st.jobs.get(&old).is_some_and(|j| j.status.is_terminal()) {
            st.jobs.remove(&old);
        }
    }
}

/// Changes the write of `job`'s latest change, still in the outbox (a new
/// one if it has gone to the writer), so what comes with the job's end is
/// stored with that change.
fn with_end_write(
    st: &mut EngineState,
    job: &mut Job,
    change: impl FnOnce(&mut crate::storage::JobWrite),
) {
    let queued = st
        .outbox
        .iter_mut()
        .rev()
        .find_map(|m| m.write.as_mut().filter(|w| w.job.id == job.id));
    match queued {
        Some(write) => change(write),
        None => {
            let mut write = super::job_write(job, Vec::new());
            change(&mut write);
            st.outbox.push(PersistMsg {
                write: Some(write),
                webhook_done: None,
                ack: None,
            });
        }
    }
}

pub(crate) fn create(shared: &Shared, st: &mut EngineState, id: Uuid, bp: &Blueprint, new: NewJob) {
    let now = Utc::now();
    let mut job = Job {
        id,
        blueprint: bp.name.clone(),
        blueprint_version: bp.version,
        owner: new.owner,
        status: JobStatus::Pending,
        current_state: bp.start.clone(),
        initial_data: new.initial_data.into(),
        results: Default::default(),
        result: None,
        error: None,
        data_metadata: None,
        tasks: Vec::new(),
        state_history: vec![StateVisit {
            state: bp.start.clone(),
            entered_at: now,
            outcome: None,
        }],
        task_worker_id: None,
        transitions: 0,
        attempts: 0,
        progress: None,
        webhook_url: new.webhook_url,
        dispatch_timeout: new.dispatch_timeout,
        result_timeout: new.result_timeout,
        created_at: now,
        updated_at: now,
        finished_at: None,
        wake_at: None,
        approval_token: None,
        parent: new.parent,
        parent_told: false,
        child: None,
        depth: new.depth,
        map: None,
        options: new.options,
        version: 0,
        webhook_sent: false,
        retired: false,
        counted_active: false,
        worker_event: None,
    };
    tracing::info!(job_id = %id, "job {id} started ({}) with initial data {}", bp.name, rxon::text::json_preview(&job.initial_data));
    if tracing::enabled!(tracing::Level::DEBUG) {
        let initial = serde_json::to_string(&job.initial_data).unwrap_or_default();
        tracing::debug!(job_id = %id, "initial data of job {id}: {initial}");
    }
    let mut events = vec![event(
        EventKind::Created,
        format!("job created from blueprint {}", bp.name),
    )];
    match new.start_at.filter(|at| *at > now) {
        Some(at) => {
            job.status = JobStatus::Scheduled;
            job.wake_at = Some(at);
            arm_wake(st, &job, at);
            events.push(event(
                EventKind::Sleeping,
                format!("scheduled to start at {}", at.to_rfc3339()),
            ));
        }
        None => advance(shared, st, &mut job, &mut events),
    }
    commit(st, &mut job, events, None);
    put(st, job);
}

/// Runs the state machine until the job waits or ends.
pub(crate) fn advance(
    shared: &Shared,
    st: &mut EngineState,
    job: &mut Job,
    events: &mut Vec<JobEvent>,
) {
    let Some(bp) = shared.blueprint_of(job) else {
        let msg = format!("blueprint {} is not loaded", job.blueprint);
        return blueprint_error(st, job, &msg, events);
    };
    loop {
        let max = job
            .options
            .max_transitions
            .unwrap_or(shared.settings.max_transitions);
        if job.transitions > max {
            let msg = format!(
                "the job took more than {max} transitions; is there a loop in blueprint {}?",
                bp.name
            );
            return blueprint_error(st, job, &msg, events);
        }
        let Some(state) = bp.state(&job.current_state) else {
            let msg = format!(
                "state {} does not exist in blueprint {}",
                job.current_state, bp.name
            );
            return blueprint_error(st, job, &msg, events);
        };
        match &state.action {
            Action::End { finished: true } => {
                if let Some(output) = &bp.contract.output {
                    let result = serde_json::Value::Object(
                        job.result.as_deref().cloned().unwrap_or_default(),
                    );
                    if let Err(e) = output.check(&result) {
                        let msg = format!(
                            "the result does not match the output_schema of blueprint {}: {e}",
                            bp.name
                        );
                        let code = rxon::error_code::CONTRACT_VIOLATION;
                        return end_failed(st, job, JobStatus::Failed, code, &msg, events);
                    }
                }
                job.status = JobStatus::Finished;
                job.finished_at = Some(Utc::now());
                job.error = None;
                let empty = Object::new();
                let result = job.result.as_deref().unwrap_or(&empty);
                tracing::info!(job_id = %job.id, "job {} completed in state {}: result {}", job.id, job.current_state, rxon::text::json_preview(result));
                if tracing::enabled!(tracing::Level::DEBUG) {
                    let result = serde_json::to_string(result).unwrap_or_default();
                    tracing::debug!(job_id = %job.id, "result of job {}: {result}", job.id);
                }
                events.push(event(
                    EventKind::Finished,
                    format!("finished in state {}", job.current_state),
                ));
                return;
            }
            Action::End { finished: false } => {
                job.status = JobStatus::Failed;
                job.finished_at = Some(Utc::now());
                let error = job.error.clone().unwrap_or(JobError {
                    code: "FAILED".into(),
                    message: format!("the job reached the failure state {}", job.current_state),
                });
                tracing::warn!(
                    job_id = %job.id,
                    "job {} failed in state {}: {}: {}",
                    job.id, job.current_state, error.code, error.message
                );
                events.push(event(
                    EventKind::Failed,
                    format!(
                        "failed in state {}: {}: {}",
                        job.current_state, error.code, error.message
                    ),
                ));
                job.error = Some(error);
                return;
            }
            Action::Goto(rules) => {
                let ctx = job.expr_context(&shared.settings.clients);
                let mut target = None;
                for (when, to) in rules {
                    match when.as_ref().map(|w| w.truthy(&ctx)).unwrap_or(Ok(true)) {
                        Ok(true) => {
                            target = Some(to.clone());
                            break;
                        }
                        Ok(false) => {}
                        Err(e) => {
                            let msg = format!("state {}: {e}", job.current_state);
                            return blueprint_error(st, job, &msg, events);
                        }
                    }
                }
                let Some(to) = target else {
                    let msg = format!("state {}: no goto rule matched", job.current_state);
                    return blueprint_error(st, job, &msg, events);
                };
                enter_state(job, &to, None, events);
            }
            Action::Sleep { wait, next } => {
                let wake_at = match sleep_until(shared, wait, job) {
                    Ok(at) => at,
                    Err(e) => {
                        let msg = format!("state {}: {e}", job.current_state);
                        return blueprint_error(st, job, &msg, events);
                    }
                };
                let Some(wake_at) = wake_at else {
                    // No time to wait: on at once.
                    enter_state(job, next, None, events);
                    continue;
                };
                sleep(st, job, wake_at, events);
                return;
            }
            Action::Dispatch { task, .. } => {
                if let Some(why) = forbidden(job, &task.task_type) {
                    let code = own_code::POLICY_VIOLATION;
                    return end_failed(st, job, JobStatus::Failed, code, &why, events);
                }
                let ctx = job.expr_context(&shared.settings.clients);
                let record = match spec_record(task, &ctx, job, None) {
                    Ok(record) => record,
                    Err(e) => {
                        let msg = format!("state {}: {e}", job.current_state);
                        return blueprint_error(st, job, &msg, events);
                    }
                };
                job.tasks = vec![record];
                job.status = JobStatus::WaitingForWorker;
                enqueue(
                    st,
                    job,
                    0,
                    task_timeout(task.dispatch_timeout, job.dispatch_timeout),
                    events,
                );
                return;
            }
            Action::Wait(spec) => {
                start_wait(st, job, spec, events);
                return;
            }
            Action::Run(spec) => {
                start_child(shared, st, job, spec, events);
                return;
            }
            Action::Map(spec) => match start_map(shared, st, job, spec, events) {
                Flow::Advance => continue,
                Flow::Stop => return,
            },
            Action::Parallel { branches, .. } => {
                if let Some(why) = branches.values().find_map(|b| forbidden(job, &b.task_type)) {
                    let code = own_code::POLICY_VIOLATION;
                    return end_failed(st, job, JobStatus::Failed, code, &why, events);
                }
                let ctx = job.expr_context(&shared.settings.clients);
                let mut records = Vec::new();
                for (name, spec) in branches {
                    match spec_record(spec, &ctx, job, Some(name.clone())) {
                        Ok(record) => records.push(record),
                        Err(e) => {
                            let msg = format!("state {} branch {name}: {e}", job.current_state);
                            return blueprint_error(st, job, &msg, events);
                        }
                    }
                }
                job.tasks = records;
                job.status = JobStatus::WaitingForParallelTasks;
                for i in 0..job.tasks.len() {
                    let spec = &branches[job.tasks[i].branch.as_deref().unwrap_or_default()];
                    enqueue(
                        st,
                        job,
                        i,
                        task_timeout(spec.dispatch_timeout, job.dispatch_timeout),
                        events,
                    );
                }
                return;
            }
        }
    }
}

/// A task's timeout: its blueprint state's own, else the job's (a stored
/// value out of bounds counts as none; recovery fails such jobs).
pub(crate) fn task_timeout(own: Option<Duration>, job_default: Option<f64>) -> Option<Duration> {
    own.or_else(|| crate::secs::stored(job_default))
}

pub(crate) fn eval_params(
    spec: &TaskSpec,
    ctx: &crate::blueprint::expr::Context,
) -> Result<Object, String> {
    let mut out = Object::new();
    for (name, value) in &spec.params {
        out.insert(
            name.clone(),
            value.eval(ctx).map_err(|e| format!("param {name}: {e}"))?,
        );
    }
    Ok(out)
}

/// A task of `spec` for `job`: its params, priority and concurrency key
/// evaluated in `ctx`, what it requires of its worker as `spec` says.
pub(crate) fn spec_record(
    spec: &TaskSpec,
    ctx: &crate::blueprint::expr::Context,
    job: &Job,
    branch: Option<String>,
) -> Result<TaskRecord, String> {
    let params = eval_params(spec, ctx)?;
    let priority = task_priority(spec, ctx, job)?;
    let mut record = new_record(&spec.task_type, params, branch);
    record.priority = priority;
    record.requires = spec.requires.clone();
    record.strategy = spec.strategy;
    if let Some(c) = &spec.concurrency {
        let key = key_value(&c.key, ctx, "concurrency.key")?;
        record.concurrency = Some(crate::job::TaskKey { key, max: c.max });
    }
    if let Some(r) = &spec.rate {
        let key = key_value(&r.key, ctx, "rate.key")?;
        record.rate = Some(crate::job::TaskRate {
            key,
            per_second: r.per_second,
            burst: r.burst,
        });
    }
    Ok(record)
}

/// Longest concurrency or rate key.
pub const MAX_KEY_CHARS: usize = 256;

/// The value of a concurrency or rate key's expression (`what` names it).
fn key_value(
    expr: &crate::blueprint::expr::Expr,
    ctx: &crate::blueprint::expr::Context,
    what: &str,
) -> Result<String, String> {
    let key = match expr.eval(ctx)? {
        Value::String(s) => s,
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => {
            return Err(format!(
                "{what} must give a string or a number, got {other}"
            ));
        }
    };
    if key.chars().count() > MAX_KEY_CHARS {
        return Err(format!("{what} gave more than {MAX_KEY_CHARS} characters"));
    }
    Ok(key)
}

/// The priority of a task of `spec` in `job` (evaluated in `ctx`).
pub(crate) fn task_priority(
    spec: &TaskSpec,
    ctx: &crate::blueprint::expr::Context,
    job: &Job,
) -> Result<f64, String> {
    let given = match &spec.priority {
        Some(v) => v.eval(ctx)?,
        None => Value::Null,
    };
    // Nothing given (or an expression giving nothing): the job's own.
    let p = match given {
        Value::Null => job.options.priority.unwrap_or(0.0),
        v => v
            .as_f64()
            .ok_or_else(|| format!("priority must give a number, got {v}"))?,
    };
    let max = crate::blueprint::MAX_PRIORITY;
    if !p.is_finite() || p.abs() > max {
        return Err(format!("priority {p} is outside -{max} to {max}"));
    }
    Ok(p)
}

pub(crate) fn new_record(task_type: &str, params: Object, branch: Option<String>) -> TaskRecord {
    TaskRecord {
        task_id: new_task_id(),
        task_type: task_type.to_string(),
        params,
        branch,
        index: None,
        priority: 0.0,
        requires: None,
        concurrency: None,
        rate: None,
        strategy: None,
        events: 0,
        progress_at: None,
        attempt: 1,
        worker_id: None,
        queued_at: Utc::now(),
        picked_up_at: None,
        result: None,
        last_error: None,
    }
}

/// When a job entering a `sleep` state wakes: `None` when that is now or
/// past (a zero wait, or a time gone by). Bounded like every timeout.
fn sleep_until(
    shared: &Shared,
    wait: &crate::blueprint::SleepFor,
    job: &Job,
) -> Result<Option<chrono::DateTime<Utc>>, String> {
    let ctx = job.expr_context(&shared.settings.clients);
    let now = Utc::now();
    let at = match wait {
        crate::blueprint::SleepFor::Seconds(seconds) => {
            let value = seconds.eval(&ctx)?;
            let secs = value.as_f64().ok_or_else(|| {
                format!("sleep.seconds must give a number of seconds, got {value}")
            })?;
            if secs == 0.0 {
                return Ok(None);
            }
            let wait = crate::secs::timeout("sleep.seconds", secs).map_err(|e| e.to_string())?;
            now + chrono::Duration::from_std(wait).map_err(|e| e.to_string())?
        }
        crate::blueprint::SleepFor::Until(until) => {
            let value = until.eval(&ctx)?;
            let text = value.as_str().ok_or_else(|| {
                format!("sleep.until must give an RFC 3339 time (a string), got {value}")
            })?;
            let at = chrono::DateTime::parse_from_rfc3339(text)
                .map_err(|e| format!("sleep.until: {text:?} is not an RFC 3339 time: {e}"))?
                .with_timezone(&Utc);
            let longest = chrono::Duration::seconds(crate::secs::MAX_TIMEOUT_SECS as i64);
            if at - now > longest {
                return Err(format!(
                    "sleep.until {text} is more than 30 days away (the longest a job may sleep)"
                ));
            }
            at
        }
    };
    Ok((at > now).then_some(at))
}

/// Puts `job` to sleep until `wake_at` (a timer; no worker).
pub(crate) fn sleep(
    st: &mut EngineState,
    job: &mut Job,
    wake_at: chrono::DateTime<Utc>,
    events: &mut Vec<JobEvent>,
) {
    job.status = JobStatus::Sleeping;
    job.wake_at = Some(wake_at);
    arm_wake(st, job, wake_at);
    events.push(event(
        EventKind::Sleeping,
        format!(
            "sleeping in state {} until {}",
            job.current_state,
            wake_at.to_rfc3339()
        ),
    ));
}

/// The timer that wakes `job` (sleeping, or waiting with a timeout) in its
/// current state at `at` (at once if that passed).
pub(crate) fn arm_wake(st: &mut EngineState, job: &Job, at: chrono::DateTime<Utc>) {
    let wait = (at - Utc::now()).to_std().unwrap_or_default();
    let step = job.transitions.to_string();
    st.add_timer(Instant::now() + wait, Timer::Wake { job: job.id, step });
}

pub(crate) fn enter_state(
    job: &mut Job,
    to: &str,
    outcome: Option<&str>,
    events: &mut Vec<JobEvent>,
) {
    if let Some(last) = job.state_history.last_mut() {
        last.outcome = outcome.map(str::to_string);
    }
    events.push(event(
        EventKind::Transition,
        format!(
            "{} → {to}{}",
            job.current_state,
            outcome.map(|o| format!(" on {o}")).unwrap_or_default()
        ),
    ));
    job.current_state = to.to_string();
    job.state_history.push(StateVisit {
        state: to.to_string(),
        entered_at: Utc::now(),
        outcome: None,
    });
    job.transitions += 1;
    if let Some(attempts) = job.tasks.iter().map(|t| t.attempt).max() {
        job.attempts = attempts;
    }
    job.tasks.clear();
    job.map = None;
    job.status = JobStatus::Running;
}

/// The blueprint cannot go on (bad expression, no matching rule, loop): the job fails.
pub(crate) fn blueprint_error(
    st: &mut EngineState,
    job: &mut Job,
    msg: &str,
    events: &mut Vec<JobEvent>,
) {
    end_failed(
        st,
        job,
        JobStatus::Failed,
        own_code::BLUEPRINT_ERROR,
        msg,
        events,
    );
}

pub(crate) fn end_failed(
    st: &mut EngineState,
    job: &mut Job,
    status: JobStatus,
    code: &str,
    message: &str,
    events: &mut Vec<JobEvent>,
) {
    job.status = status;
    job.finished_at = Some(Utc::now());
    job.error = Some(JobError {
        code: code.to_string(),
        message: message.to_string(),
    });
    forget_tasks(st, job);
    tracing::warn!(job_id = %job.id, "job {} {status}: {}: {}", job.id, rxon::text::for_log(code), rxon::text::for_log(message));
    events.push(event(
        EventKind::ended(status),
        format!("{code}: {message}"),
    ));
}

/// Drops a job's tasks from workers' in-flight sets (queue entries are
/// skipped lazily when popped).
/// Takes the job's running tasks from their workers, who are told to stop
/// them (through their channels at once, else at their next heartbeat).
pub(crate) fn forget_tasks(st: &mut EngineState, job: &Job) {
    for task in &job.tasks {
        if let Some(w) = &task.worker_id {
            if task.result.is_none() {
                st.stops.push(TaskStop {
                    worker_id: w.clone(),
                    task_id: task.task_id.clone(),
                    job_id: job.id,
                });
            }
            st.release(w, &task.task_id);
        }
    }
}

pub(crate) fn spec_of<'a>(
    bp: &'a Blueprint,
    state: &str,
    branch: Option<&str>,
) -> Option<&'a TaskSpec> {
    match (&bp.state(state)?.action, branch) {
        (Action::Dispatch { task, .. }, None) => Some(task),
        (Action::Parallel { branches, .. }, Some(b)) => branches.get(b),
        (Action::Map(m), None) => Some(&m.task),
        _ => None,
    }
}

/// Queues task `idx` again (retry, lost worker, restart) with the dispatch
/// timeout its blueprint state (or the job) gives it.
pub(crate) fn requeue(
    shared: &Shared,
    st: &mut EngineState,
    job: &mut Job,
    idx: usize,
    events: &mut Vec<JobEvent>,
) {
    let own = shared
        .blueprint_of(job)
        .as_ref()
        .and_then(|bp| spec_of(bp, &job.current_state, job.tasks[idx].branch.as_deref()))
        .and_then(|s| s.dispatch_timeout);
    let timeout = task_timeout(own, job.dispatch_timeout);
    enqueue(st, job, idx, timeout, events);
}
