//! What happens to a job on each event: creation, a worker taking a task, a
//! result, a failure, a timer. Every function runs under the engine lock and
//! queues its storage writes in `st.outbox`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rxon::error_code;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::time::Instant;
use uuid::Uuid;

use super::persist::PersistMsg;
use super::workers::WorkerRecord;
use super::{CancelError, EngineState, NewJob, Queued, Shared, Timer, event, job_write};
use crate::blueprint::{Action, Blueprint, TaskSpec};
use crate::job::{Job, JobError, JobEvent, JobStatus, Object, StateVisit, TaskRecord};

/// Error codes the orchestrator itself assigns.
pub mod own_code {
    pub const DISPATCH_TIMEOUT: &str = "DISPATCH_TIMEOUT";
    pub const UNHANDLED_STATUS: &str = "UNHANDLED_STATUS";
    pub const BLUEPRINT_ERROR: &str = "BLUEPRINT_ERROR";
    pub const CANCELLED: &str = "CANCELLED";
}

fn new_task_id() -> String {
    format!("task-{}", Uuid::new_v4())
}

fn commit(
    st: &mut EngineState,
    job: &mut Job,
    events: Vec<JobEvent>,
    ack: Option<oneshot::Sender<Result<(), String>>>,
) {
    let write = job_write(job, events);
    st.outbox.push(PersistMsg {
        write: Some(write),
        ack,
    });
}

/// Takes a job out of the map to change it; put it back with [`put`].
fn take(st: &mut EngineState, id: Uuid) -> Option<Job> {
    st.jobs.remove(&id)
}

fn put(st: &mut EngineState, mut job: Job) {
    if job.status.is_terminal() {
        if let Some(waiters) = st.job_waiters.remove(&job.id) {
            waiters.notify_waiters();
        }
        if let (Some(url), false) = (&job.webhook_url, job.webhook_sent) {
            st.webhooks
                .push(super::webhook::Webhook::for_job(url, &job));
            job.webhook_sent = true;
        }
    }
    st.jobs.insert(job.id, job);
}

pub fn create(
    shared: &Shared,
    st: &mut EngineState,
    id: Uuid,
    bp: &Blueprint,
    new: NewJob,
    ack: oneshot::Sender<Result<(), String>>,
) {
    let now = Utc::now();
    let mut job = Job {
        id,
        blueprint: bp.name.clone(),
        owner: new.owner,
        status: JobStatus::Pending,
        current_state: bp.start.clone(),
        initial_data: new.initial_data,
        results: Object::new(),
        result: None,
        error: None,
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
        version: 0,
        webhook_sent: false,
        retired: false,
    };
    let initial = serde_json::to_string(&job.initial_data).unwrap_or_default();
    tracing::info!(job_id = %id, "job {id} started ({}) with initial data {initial}", bp.name);
    let mut events = vec![event(
        "created",
        format!("job created from blueprint {}", bp.name),
    )];
    advance(shared, st, &mut job, &mut events);
    commit(st, &mut job, events, Some(ack));
    put(st, job);
}

/// Runs the state machine until the job waits or ends.
fn advance(shared: &Shared, st: &mut EngineState, job: &mut Job, events: &mut Vec<JobEvent>) {
    let Some(bp) = shared.blueprints.get(&job.blueprint).cloned() else {
        let msg = format!("blueprint {} is not loaded", job.blueprint);
        return end_failed(
            st,
            job,
            JobStatus::Failed,
            own_code::BLUEPRINT_ERROR,
            &msg,
            events,
        );
    };
    loop {
        if job.transitions > shared.settings.max_transitions {
            let msg = format!(
                "the job took more than {} transitions; is there a loop in blueprint {}?",
                shared.settings.max_transitions, bp.name
            );
            return end_failed(
                st,
                job,
                JobStatus::Failed,
                own_code::BLUEPRINT_ERROR,
                &msg,
                events,
            );
        }
        let Some(state) = bp.state(&job.current_state) else {
            let msg = format!(
                "state {} does not exist in blueprint {}",
                job.current_state, bp.name
            );
            return end_failed(
                st,
                job,
                JobStatus::Failed,
                own_code::BLUEPRINT_ERROR,
                &msg,
                events,
            );
        };
        match &state.action {
            Action::End { finished: true } => {
                job.status = JobStatus::Finished;
                job.finished_at = Some(Utc::now());
                job.error = None;
                let result = Value::Object(job.result.clone().unwrap_or_default());
                tracing::info!(job_id = %job.id, "job {} completed in state {}: result {result}", job.id, job.current_state);
                events.push(event(
                    "finished",
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
                    "failed",
                    format!(
                        "failed in state {}: {}: {}",
                        job.current_state, error.code, error.message
                    ),
                ));
                job.error = Some(error);
                return;
            }
            Action::Goto(rules) => {
                let ctx = job.expr_context();
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
                            return end_failed(
                                st,
                                job,
                                JobStatus::Failed,
                                own_code::BLUEPRINT_ERROR,
                                &msg,
                                events,
                            );
                        }
                    }
                }
                let Some(to) = target else {
                    let msg = format!("state {}: no goto rule matched", job.current_state);
                    return end_failed(
                        st,
                        job,
                        JobStatus::Failed,
                        own_code::BLUEPRINT_ERROR,
                        &msg,
                        events,
                    );
                };
                enter_state(job, &to, None, events);
            }
            Action::Dispatch { task, .. } => {
                let ctx = job.expr_context();
                let params = match eval_params(task, &ctx) {
                    Ok(p) => p,
                    Err(e) => {
                        let msg = format!("state {}: {e}", job.current_state);
                        return end_failed(
                            st,
                            job,
                            JobStatus::Failed,
                            own_code::BLUEPRINT_ERROR,
                            &msg,
                            events,
                        );
                    }
                };
                let record = new_record(&task.task_type, params, None);
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
            Action::Parallel { branches, .. } => {
                let ctx = job.expr_context();
                let mut records = Vec::new();
                for (name, spec) in branches {
                    match eval_params(spec, &ctx) {
                        Ok(params) => {
                            records.push(new_record(&spec.task_type, params, Some(name.clone())))
                        }
                        Err(e) => {
                            let msg = format!("state {} branch {name}: {e}", job.current_state);
                            return end_failed(
                                st,
                                job,
                                JobStatus::Failed,
                                own_code::BLUEPRINT_ERROR,
                                &msg,
                                events,
                            );
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

fn task_timeout(own: Option<Duration>, job_default: Option<f64>) -> Option<Duration> {
    own.or_else(|| job_default.map(Duration::from_secs_f64))
}

fn eval_params(spec: &TaskSpec, ctx: &Value) -> Result<Object, String> {
    let mut out = Object::new();
    for (name, value) in &spec.params {
        out.insert(
            name.clone(),
            value.eval(ctx).map_err(|e| format!("param {name}: {e}"))?,
        );
    }
    Ok(out)
}

fn new_record(task_type: &str, params: Object, branch: Option<String>) -> TaskRecord {
    TaskRecord {
        task_id: new_task_id(),
        task_type: task_type.to_string(),
        params,
        branch,
        attempt: 1,
        worker_id: None,
        queued_at: Utc::now(),
        picked_up_at: None,
        result: None,
        last_error: None,
    }
}

fn enter_state(job: &mut Job, to: &str, outcome: Option<&str>, events: &mut Vec<JobEvent>) {
    if let Some(last) = job.state_history.last_mut() {
        last.outcome = outcome.map(str::to_string);
    }
    events.push(event(
        "transition",
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
    job.status = JobStatus::Running;
}

fn end_failed(
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
    tracing::warn!(job_id = %job.id, "job {} {status}: {code}: {message}", job.id);
    events.push(event(status.as_str(), format!("{code}: {message}")));
}

/// Drops a job's tasks from workers' in-flight sets (queue entries are
/// skipped lazily when popped).
fn forget_tasks(st: &mut EngineState, job: &Job) {
    for task in &job.tasks {
        if let Some(w) = task.worker_id.as_ref().and_then(|w| st.workers.get_mut(w)) {
            w.in_flight.remove(&task.task_id);
        }
    }
}

/// Puts task `idx` of `job` in the queue of its type and wakes workers that serve it.
fn enqueue(
    st: &mut EngineState,
    job: &mut Job,
    idx: usize,
    dispatch_timeout: Option<Duration>,
    events: &mut Vec<JobEvent>,
) {
    let seq = st.next_seq();
    let task = &mut job.tasks[idx];
    task.worker_id = None;
    task.picked_up_at = None;
    task.queued_at = Utc::now();
    st.queues
        .entry(task.task_type.clone())
        .or_default()
        .push_back(Queued {
            job: job.id,
            task_id: task.task_id.clone(),
            seq,
        });
    let (task_id, task_type, attempt) =
        (task.task_id.clone(), task.task_type.clone(), task.attempt);
    if let Some(timeout) = dispatch_timeout {
        st.add_timer(
            Instant::now() + timeout,
            Timer::DispatchTimeout {
                job: job.id,
                task_id: task_id.clone(),
            },
        );
    }
    let mut offered = 0;
    for worker in st.workers.values().filter(|w| w.serves(&task_type)) {
        worker.wake.notify_one();
        offered += 1;
    }
    let attempt_note = if attempt > 1 {
        format!(" (attempt {attempt})")
    } else {
        String::new()
    };
    if offered == 0 {
        tracing::warn!(
            job_id = %job.id,
            "job {}: task {task_id} ({task_type}){attempt_note} is waiting: no registered worker offers task type {task_type}",
            job.id
        );
    } else {
        tracing::info!(job_id = %job.id, "job {}: task {task_id} ({task_type}){attempt_note} queued for {offered} worker(s)", job.id);
    }
    events.push(event(
        "task_queued",
        format!("task {task_id} ({task_type}){attempt_note} queued"),
    ));
}

/// Gives the oldest queued task this worker can run to it.
pub fn take_task(
    shared: &Shared,
    st: &mut EngineState,
    worker_id: &str,
) -> Option<rxon::TaskPayload> {
    let skills: Vec<String> = st
        .workers
        .get(worker_id)?
        .skills
        .iter()
        .map(|s| s.name.clone())
        .collect();
    loop {
        let mut best: Option<(u64, &str)> = None;
        for skill in &skills {
            if let Some(front) = st.queues.get(skill).and_then(|q| q.front())
                && best.is_none_or(|(seq, _)| front.seq < seq)
            {
                best = Some((front.seq, skill));
            }
        }
        let skill = best?.1.to_string();
        let queued = st.queues.get_mut(&skill)?.pop_front()?;
        if let Some(payload) = hand_out(shared, st, worker_id, &queued) {
            return Some(payload);
        }
    }
}

fn hand_out(
    shared: &Shared,
    st: &mut EngineState,
    worker_id: &str,
    queued: &Queued,
) -> Option<rxon::TaskPayload> {
    let mut job = take(st, queued.job)?;
    let waiting = matches!(
        job.status,
        JobStatus::WaitingForWorker | JobStatus::WaitingForParallelTasks
    );
    let idx = job
        .tasks
        .iter()
        .position(|t| t.task_id == queued.task_id && t.worker_id.is_none() && t.result.is_none());
    let (true, Some(idx)) = (waiting, idx) else {
        put(st, job);
        return None;
    };
    let now = Utc::now();
    let spec_timeout = shared
        .blueprints
        .get(&job.blueprint)
        .and_then(|bp| spec_of(bp, &job.current_state, job.tasks[idx].branch.as_deref()))
        .and_then(|spec| spec.result_timeout);
    let result_timeout = task_timeout(spec_timeout, job.result_timeout);
    let task = &mut job.tasks[idx];
    task.worker_id = Some(worker_id.to_string());
    task.picked_up_at = Some(now);
    job.task_worker_id = Some(worker_id.to_string());
    let task = job.tasks[idx].clone();
    if let Some(w) = st.workers.get_mut(worker_id) {
        w.in_flight.insert(task.task_id.clone());
    }
    let deadline = result_timeout.map(|t| {
        st.add_timer(
            Instant::now() + t,
            Timer::ResultTimeout {
                job: job.id,
                task_id: task.task_id.clone(),
            },
        );
        Value::from(now.timestamp() + t.as_secs_f64().ceil() as i64)
    });
    tracing::info!(
        job_id = %job.id,
        "job {}: task {} ({}) dispatched to worker {worker_id}",
        job.id, task.task_id, task.task_type
    );
    let events = vec![event(
        "task_dispatched",
        format!(
            "task {} ({}) taken by worker {worker_id}",
            task.task_id, task.task_type
        ),
    )];
    commit(st, &mut job, events, None);
    let payload = rxon::TaskPayload {
        job_id: job.id.to_string(),
        task_id: task.task_id.clone(),
        task_type: task.task_type.clone(),
        params: task.params.clone(),
        tracing_context: Object::new(),
        priority: Some(0.0),
        deadline,
        step: Some(u64::from(job.transitions) + 1),
        timestamp: Some(now.timestamp()),
        sig: None,
    };
    put(st, job);
    Some(payload)
}

fn spec_of<'a>(bp: &'a Blueprint, state: &str, branch: Option<&str>) -> Option<&'a TaskSpec> {
    match (&bp.state(state)?.action, branch) {
        (Action::Dispatch { task, .. }, None) => Some(task),
        (Action::Parallel { branches, .. }, Some(b)) => branches.get(b),
        _ => None,
    }
}

fn ignored(reason: &str, message: String) -> rxon::ResultResponse {
    tracing::warn!("result ignored ({reason}): {message}");
    rxon::ResultResponse {
        status: "ignored".into(),
        transition: None,
        reason: Some(reason.into()),
        message: Some(message),
    }
}

fn accepted(transition: &str) -> rxon::ResultResponse {
    rxon::ResultResponse {
        status: "accepted".into(),
        transition: Some(transition.into()),
        reason: None,
        message: None,
    }
}

pub fn apply_result(
    shared: &Shared,
    st: &mut EngineState,
    worker_id: &str,
    result: &rxon::TaskResult,
) -> rxon::ResultResponse {
    if let Some(w) = st.workers.get_mut(worker_id) {
        w.last_seen = Instant::now();
    }
    let Ok(job_id) = Uuid::parse_str(&result.job_id) else {
        return ignored("job_not_found", format!("Job {} not found.", result.job_id));
    };
    let Some(mut job) = take(st, job_id) else {
        return ignored(
            "job_not_found",
            format!(
                "Job {} not found (finished long ago or never existed).",
                result.job_id
            ),
        );
    };
    let response = apply_result_to(shared, st, &mut job, worker_id, result);
    put(st, job);
    response
}

fn apply_result_to(
    shared: &Shared,
    st: &mut EngineState,
    job: &mut Job,
    worker_id: &str,
    result: &rxon::TaskResult,
) -> rxon::ResultResponse {
    if job.status == JobStatus::Cancelled {
        release(st, worker_id, &result.task_id);
        return ignored(
            "job_cancelled",
            format!(
                "Job {} was cancelled; result of task {} ignored.",
                job.id, result.task_id
            ),
        );
    }
    if job.status.is_terminal() {
        release(st, worker_id, &result.task_id);
        return ignored(
            "job_already_terminated",
            format!("Job {} already ended ({}).", job.id, job.status),
        );
    }
    let Some(idx) = job
        .tasks
        .iter()
        .position(|t| t.task_id == result.task_id && t.result.is_none())
    else {
        release(st, worker_id, &result.task_id);
        return ignored(
            "stale_task",
            format!(
                "Result ignored: task_id {} is no longer active for job {}.",
                result.task_id, job.id
            ),
        );
    };
    if job.tasks[idx].worker_id.as_deref() != Some(worker_id) {
        return ignored(
            "worker_mismatch",
            format!(
                "Task {} of job {} is not assigned to worker {worker_id}.",
                result.task_id, job.id
            ),
        );
    }
    release(st, worker_id, &result.task_id);
    let status = result.status().to_string();
    let mut events = Vec::new();
    tracing::info!(job_id = %job.id, "job {}: result of task {} from worker {worker_id}: {status}", job.id, result.task_id);
    let transition = if status == rxon::status::FAILURE {
        let error = result.error.clone().unwrap_or(rxon::TaskErrorInfo {
            code: error_code::TRANSIENT.into(),
            message: "the worker reported a failure without an error".into(),
            details: None,
        });
        task_failed(
            shared,
            st,
            job,
            idx,
            &error.code,
            &error.message,
            &mut events,
        );
        "failure_handled"
    } else if status == rxon::status::CANCELLED {
        forget_tasks(st, job);
        job.status = JobStatus::Cancelled;
        job.finished_at = Some(Utc::now());
        job.error = Some(JobError {
            code: own_code::CANCELLED.into(),
            message: format!("worker {worker_id} cancelled the task"),
        });
        events.push(event(
            "cancelled",
            format!("worker {worker_id} cancelled task {}", result.task_id),
        ));
        "cancelled_handled"
    } else {
        let data = result.data.clone().unwrap_or_default();
        events.push(event(
            "task_result",
            format!("task {} returned {status}", result.task_id),
        ));
        task_succeeded(shared, st, job, idx, &status, data, &mut events)
    };
    commit(st, job, events, None);
    accepted(transition)
}

fn release(st: &mut EngineState, worker_id: &str, task_id: &str) {
    if let Some(w) = st.workers.get_mut(worker_id) {
        w.in_flight.remove(task_id);
    }
}

fn task_succeeded(
    shared: &Shared,
    st: &mut EngineState,
    job: &mut Job,
    idx: usize,
    status: &str,
    data: Object,
    events: &mut Vec<JobEvent>,
) -> &'static str {
    let Some(bp) = shared.blueprints.get(&job.blueprint).cloned() else {
        return "unknown_blueprint";
    };
    let Some(state) = bp.state(&job.current_state) else {
        return "unknown_state";
    };
    match &state.action {
        Action::Dispatch { on, .. } => {
            let Some(to) = on.get(status) else {
                let msg = format!(
                    "the worker returned status `{status}`, but state {} has no transition for it",
                    job.current_state
                );
                end_failed(
                    st,
                    job,
                    JobStatus::Failed,
                    own_code::UNHANDLED_STATUS,
                    &msg,
                    events,
                );
                return "unhandled_status_failure";
            };
            job.results
                .insert(job.current_state.clone(), Value::Object(data.clone()));
            job.result = Some(data);
            let to = to.clone();
            enter_state(job, &to, Some(status), events);
            advance(shared, st, job, events);
            "success_transition"
        }
        Action::Parallel { next, .. } => {
            if status != rxon::status::SUCCESS {
                let msg = format!(
                    "branch tasks must return `success`, got `{status}` in state {}",
                    job.current_state
                );
                end_failed(
                    st,
                    job,
                    JobStatus::Failed,
                    own_code::UNHANDLED_STATUS,
                    &msg,
                    events,
                );
                return "unhandled_status_failure";
            }
            job.tasks[idx].result = Some(data);
            if job.tasks.iter().any(|t| t.result.is_none()) {
                return "parallel_branch_accepted";
            }
            let gathered: Object = job
                .tasks
                .iter()
                .map(|t| {
                    (
                        t.branch.clone().unwrap_or_default(),
                        Value::Object(t.result.clone().unwrap_or_default()),
                    )
                })
                .collect();
            job.results
                .insert(job.current_state.clone(), Value::Object(gathered.clone()));
            job.result = Some(gathered);
            let next = next.clone();
            enter_state(job, &next, Some("success"), events);
            advance(shared, st, job, events);
            "success_transition"
        }
        _ => "unexpected_result",
    }
}

/// How a failure code is handled.
enum FailureClass {
    /// Worth another attempt.
    Retry,
    /// The input is wrong: the failure path, or `failed`.
    Invalid,
    /// Needs a human: `quarantined`.
    Permanent,
}

fn classify(code: &str) -> FailureClass {
    match code {
        error_code::INVALID_INPUT | error_code::INTEGRITY_MISMATCH => FailureClass::Invalid,
        error_code::PERMANENT
        | error_code::SECURITY
        | error_code::DEPENDENCY
        | error_code::CONTRACT_VIOLATION => FailureClass::Permanent,
        _ => FailureClass::Retry,
    }
}

fn task_failed(
    shared: &Shared,
    st: &mut EngineState,
    job: &mut Job,
    idx: usize,
    code: &str,
    message: &str,
    events: &mut Vec<JobEvent>,
) {
    let bp = shared.blueprints.get(&job.blueprint).cloned();
    let spec_retry = bp
        .as_ref()
        .and_then(|bp| spec_of(bp, &job.current_state, job.tasks[idx].branch.as_deref()))
        .map(|s| s.retry)
        .unwrap_or_default();
    let task = &mut job.tasks[idx];
    task.last_error = Some(JobError {
        code: code.into(),
        message: message.into(),
    });
    events.push(event(
        "task_failed",
        format!(
            "task {} (attempt {}) failed: {code}: {message}",
            task.task_id, task.attempt
        ),
    ));
    tracing::warn!(job_id = %job.id, "job {}: task {} (attempt {}) failed: {code}: {message}", job.id, task.task_id, task.attempt);
    let class = classify(code);
    if matches!(class, FailureClass::Retry) && task.attempt < spec_retry.max_attempts {
        task.attempt += 1;
        task.task_id = new_task_id();
        task.worker_id = None;
        task.picked_up_at = None;
        let delay = spec_retry.backoff(task.attempt);
        let (task_id, attempt) = (task.task_id.clone(), task.attempt);
        if job.tasks.len() == 1 && job.tasks[0].branch.is_none() {
            job.status = JobStatus::AwaitingRetry;
        }
        st.add_timer(
            Instant::now() + delay,
            Timer::Retry {
                job: job.id,
                task_id: task_id.clone(),
            },
        );
        events.push(event(
            "retry_scheduled",
            format!(
                "attempt {attempt} of {} in {delay:?} as task {task_id}",
                spec_retry.max_attempts
            ),
        ));
        return;
    }
    // Failed for good.
    job.error = Some(JobError {
        code: code.into(),
        message: message.into(),
    });
    let failure_target = bp
        .as_ref()
        .and_then(|bp| match &bp.state(&job.current_state)?.action {
            Action::Dispatch { on, .. } => on.get(rxon::status::FAILURE).cloned(),
            Action::Parallel { on_failure, .. } => on_failure.clone(),
            _ => None,
        });
    let attempts = job.tasks[idx].attempt;
    match (class, failure_target) {
        (FailureClass::Permanent, _) => {
            end_failed(st, job, JobStatus::Quarantined, code, message, events);
        }
        (_, Some(target)) => {
            forget_tasks(st, job);
            if attempts > 1 {
                events.push(event(
                    "retries_exhausted",
                    format!("giving up after {attempts} attempts"),
                ));
            }
            enter_state(job, &target, Some(rxon::status::FAILURE), events);
            advance(shared, st, job, events);
        }
        (FailureClass::Invalid, None) => {
            end_failed(st, job, JobStatus::Failed, code, message, events)
        }
        (FailureClass::Retry, None) => {
            let msg = format!("{message} (gave up after {attempts} attempts)");
            end_failed(st, job, JobStatus::Quarantined, code, &msg, events);
        }
    }
}

pub fn fire(shared: &Shared, st: &mut EngineState, timer: Timer) {
    match timer {
        Timer::WorkerSweep => {
            sweep_workers(shared, st);
            st.add_timer(
                Instant::now() + shared.settings.sweep_interval,
                Timer::WorkerSweep,
            );
        }
        Timer::DispatchTimeout { job, task_id } => {
            let Some(mut j) = take(st, job) else { return };
            let pending = !j.status.is_terminal()
                && j.tasks
                    .iter()
                    .any(|t| t.task_id == task_id && t.worker_id.is_none() && t.result.is_none());
            if pending {
                let task_type = j
                    .tasks
                    .iter()
                    .find(|t| t.task_id == task_id)
                    .map(|t| t.task_type.clone())
                    .unwrap_or_default();
                let mut events = Vec::new();
                let msg = format!(
                    "no worker took task {task_id} ({task_type}) before its dispatch timeout"
                );
                end_failed(
                    st,
                    &mut j,
                    JobStatus::Failed,
                    own_code::DISPATCH_TIMEOUT,
                    &msg,
                    &mut events,
                );
                commit(st, &mut j, events, None);
            }
            put(st, j);
        }
        Timer::ResultTimeout { job, task_id } => {
            let Some(mut j) = take(st, job) else { return };
            let idx = j
                .tasks
                .iter()
                .position(|t| t.task_id == task_id && t.worker_id.is_some() && t.result.is_none());
            if let (false, Some(idx)) = (j.status.is_terminal(), idx) {
                let worker = j.tasks[idx].worker_id.clone().unwrap_or_default();
                release(st, &worker, &task_id);
                let mut events = Vec::new();
                let msg = format!(
                    "worker {worker} did not return the result of task {task_id} before its result timeout"
                );
                task_failed(
                    shared,
                    st,
                    &mut j,
                    idx,
                    error_code::TIMEOUT,
                    &msg,
                    &mut events,
                );
                commit(st, &mut j, events, None);
            }
            put(st, j);
        }
        Timer::Retry { job, task_id } => {
            let Some(mut j) = take(st, job) else { return };
            let idx = j
                .tasks
                .iter()
                .position(|t| t.task_id == task_id && t.worker_id.is_none() && t.result.is_none());
            if let (false, Some(idx)) = (j.status.is_terminal(), idx) {
                if j.status == JobStatus::AwaitingRetry {
                    j.status = JobStatus::WaitingForWorker;
                }
                let dispatch_timeout = shared
                    .blueprints
                    .get(&j.blueprint)
                    .and_then(|bp| spec_of(bp, &j.current_state, j.tasks[idx].branch.as_deref()))
                    .and_then(|s| s.dispatch_timeout);
                let mut events = Vec::new();
                let timeout = task_timeout(dispatch_timeout, j.dispatch_timeout);
                enqueue(st, &mut j, idx, timeout, &mut events);
                commit(st, &mut j, events, None);
            }
            put(st, j);
        }
    }
}

fn sweep_workers(shared: &Shared, st: &mut EngineState) {
    let now = Instant::now();
    let ttl = shared.settings.worker_ttl;
    let dead: Vec<String> = st
        .workers
        .values()
        .filter(|w| now.duration_since(w.last_seen) > ttl)
        .map(|w| w.worker_id.clone())
        .collect();
    for worker_id in dead {
        let Some(worker) = st.workers.remove(&worker_id) else {
            continue;
        };
        tracing::warn!(
            "worker {worker_id} has not been heard from for {ttl:?}; dropping it and requeueing its {} task(s)",
            worker.in_flight.len()
        );
        requeue_tasks_of(shared, st, &worker, "its worker stopped heartbeating");
    }
}

/// Puts the tasks a worker held back in the queue, under new task ids.
fn requeue_tasks_of(shared: &Shared, st: &mut EngineState, worker: &WorkerRecord, why: &str) {
    let job_ids: BTreeSet<Uuid> = st
        .jobs
        .values()
        .filter(|j| {
            !j.status.is_terminal()
                && j.tasks
                    .iter()
                    .any(|t| worker.in_flight.contains(&t.task_id))
        })
        .map(|j| j.id)
        .collect();
    for id in job_ids {
        let Some(mut job) = take(st, id) else {
            continue;
        };
        let mut events = Vec::new();
        for idx in 0..job.tasks.len() {
            if !worker.in_flight.contains(&job.tasks[idx].task_id)
                || job.tasks[idx].result.is_some()
            {
                continue;
            }
            let old = std::mem::replace(&mut job.tasks[idx].task_id, new_task_id());
            events.push(event(
                "task_requeued",
                format!("task {old} requeued as {}: {why}", job.tasks[idx].task_id),
            ));
            let timeout = shared
                .blueprints
                .get(&job.blueprint)
                .and_then(|bp| spec_of(bp, &job.current_state, job.tasks[idx].branch.as_deref()))
                .and_then(|s| s.dispatch_timeout);
            let timeout = task_timeout(timeout, job.dispatch_timeout);
            enqueue(st, &mut job, idx, timeout, &mut events);
        }
        commit(st, &mut job, events, None);
        put(st, job);
    }
}

/// Puts a job loaded from storage back to work after a restart.
pub fn recover(shared: &Shared, st: &mut EngineState, mut job: Job) {
    let mut events = vec![event("recovered", "orchestrator restarted; job resumed")];
    match job.status {
        JobStatus::Pending | JobStatus::Running => {
            job.tasks.clear();
            advance(shared, st, &mut job, &mut events);
        }
        _ => {
            if job.status == JobStatus::AwaitingRetry {
                job.status = JobStatus::WaitingForWorker;
            }
            for idx in 0..job.tasks.len() {
                if job.tasks[idx].result.is_some() {
                    continue;
                }
                // A result for the old id (from before the restart) is stale.
                job.tasks[idx].task_id = new_task_id();
                let timeout = shared
                    .blueprints
                    .get(&job.blueprint)
                    .and_then(|bp| {
                        spec_of(bp, &job.current_state, job.tasks[idx].branch.as_deref())
                    })
                    .and_then(|s| s.dispatch_timeout);
                let timeout = task_timeout(timeout, job.dispatch_timeout);
                enqueue(st, &mut job, idx, timeout, &mut events);
            }
        }
    }
    commit(st, &mut job, events, None);
    put(st, job);
}

pub fn cancel(st: &mut EngineState, id: Uuid, owner: &str) -> Result<(), CancelError> {
    let Some(mut job) = take(st, id) else {
        return Err(CancelError::NotFound);
    };
    let result = if job.owner != owner {
        Err(CancelError::NotFound)
    } else if job.status.is_terminal() {
        Err(CancelError::AlreadyEnded(job.status))
    } else {
        job.status = JobStatus::Cancelled;
        job.finished_at = Some(Utc::now());
        job.error = Some(JobError {
            code: own_code::CANCELLED.into(),
            message: "cancelled by the client".into(),
        });
        tracing::info!(job_id = %job.id, "job {} cancelled by its client", job.id);
        let events = vec![event("cancelled", "cancelled by the client")];
        commit(st, &mut job, events, None);
        Ok(())
    };
    put(st, job);
    result
}

pub fn waiting_reason(st: &EngineState, job: &Job) -> Option<String> {
    match job.status {
        JobStatus::WaitingForWorker | JobStatus::WaitingForParallelTasks => {
            let mut reasons = Vec::new();
            for task in job.tasks.iter().filter(|t| t.result.is_none()) {
                if let Some(w) = &task.worker_id {
                    reasons.push(format!(
                        "worker {w} is running task {} ({})",
                        task.task_id, task.task_type
                    ));
                    continue;
                }
                let offering = st
                    .workers
                    .values()
                    .filter(|w| w.serves(&task.task_type))
                    .count();
                reasons.push(if offering == 0 {
                    format!("no registered worker offers task type {}", task.task_type)
                } else {
                    format!(
                        "waiting for a free worker offering task type {} ({offering} registered)",
                        task.task_type
                    )
                });
            }
            Some(reasons.join("; "))
        }
        JobStatus::AwaitingRetry => job.tasks.first().map(|t| {
            let last = t
                .last_error
                .as_ref()
                .map(|e| format!(": {}: {}", e.code, e.message))
                .unwrap_or_default();
            format!(
                "task {} failed{last}; attempt {} is scheduled after a backoff",
                t.task_type, t.attempt
            )
        }),
        _ => None,
    }
}

pub fn register_worker(st: &mut EngineState, reg: &rxon::WorkerRegistration) {
    let now = Utc::now();
    let previous = st.workers.remove(&reg.worker_id);
    let names: Vec<&str> = reg
        .supported_skills
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    tracing::info!(
        "worker {} registered{} (type {}), offering {}",
        reg.worker_id,
        if previous.is_some() { " again" } else { "" },
        reg.worker_type,
        names.join(", ")
    );
    let record = WorkerRecord {
        worker_id: reg.worker_id.clone(),
        worker_type: reg.worker_type.clone(),
        skills: reg.supported_skills.clone(),
        status: "idle".into(),
        capabilities: reg.capabilities.clone(),
        registered_at: previous.as_ref().map(|p| p.registered_at).unwrap_or(now),
        last_heartbeat_at: now,
        last_seen: Instant::now(),
        in_flight: previous
            .as_ref()
            .map(|p| p.in_flight.clone())
            .unwrap_or_default(),
        wake: previous
            .map(|p| p.wake)
            .unwrap_or_else(|| Arc::new(tokio::sync::Notify::new())),
    };
    // Tasks already waiting for one of its skills can go now.
    if names
        .iter()
        .any(|n| st.queues.get(*n).is_some_and(|q| !q.is_empty()))
    {
        record.wake.notify_one();
    }
    st.workers.insert(reg.worker_id.clone(), record);
}

pub fn heartbeat(
    st: &mut EngineState,
    worker_id: &str,
    hb: Option<&rxon::Heartbeat>,
) -> Option<rxon::HeartbeatResponse> {
    let worker = st.workers.get_mut(worker_id)?;
    worker.last_seen = Instant::now();
    worker.last_heartbeat_at = Utc::now();
    let Some(hb) = hb else {
        return Some(rxon::HeartbeatResponse {
            status: "ttl_refreshed".into(),
            ..Default::default()
        });
    };
    if worker.status != hb.status {
        tracing::info!("worker {worker_id} is {}", hb.status);
    } else {
        tracing::debug!("heartbeat from worker {worker_id} ({})", hb.status);
    }
    worker.status = hb.status.clone();
    if let Some(skills) = &hb.supported_skills {
        worker.skills = skills.clone();
    }
    let reported: Vec<String> = hb.current_tasks.clone().unwrap_or_default();
    let cancel: Vec<String> = reported
        .into_iter()
        .filter(|task_id| {
            !st.jobs.values().any(|j| {
                !j.status.is_terminal()
                    && j.tasks
                        .iter()
                        .any(|t| &t.task_id == task_id && t.result.is_none())
            })
        })
        .collect();
    Some(rxon::HeartbeatResponse {
        status: "ok".into(),
        cancel_task_ids: (!cancel.is_empty()).then_some(cancel),
        ..Default::default()
    })
}

pub fn worker_event(
    st: &mut EngineState,
    worker_id: &str,
    ev: &rxon::WorkerEventPayload,
) -> Result<(), String> {
    let Some(job_id) = ev
        .target_job_id
        .as_deref()
        .and_then(|j| Uuid::parse_str(j).ok())
    else {
        return Ok(());
    };
    let Some(mut job) = take(st, job_id) else {
        return Ok(());
    };
    let assigned = job
        .tasks
        .iter()
        .any(|t| t.worker_id.as_deref() == Some(worker_id));
    let result = if !assigned {
        Err(format!(
            "Forbidden: Worker '{worker_id}' is not assigned to job '{job_id}'"
        ))
    } else {
        if ev.event_type == "progress" {
            job.progress = Some(Value::Object(ev.payload.clone()));
            commit(
                st,
                &mut job,
                vec![event(
                    "progress",
                    Value::Object(ev.payload.clone()).to_string(),
                )],
                None,
            );
        }
        Ok(())
    };
    put(st, job);
    result
}
