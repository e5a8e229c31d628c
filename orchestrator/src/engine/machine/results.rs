//! Worker results: success and custom statuses, failures and retries.

use super::*;

pub(crate) fn ignored(reason: &str, message: String) -> rxon::ResultResponse {
    tracing::warn!(
        "result ignored ({reason}): {}",
        rxon::text::for_log(&message)
    );
    rxon::ResultResponse {
        status: "ignored".into(),
        transition: None,
        reason: Some(reason.into()),
        message: Some(message),
    }
}

pub(crate) fn accepted(transition: &str) -> rxon::ResultResponse {
    rxon::ResultResponse {
        status: "accepted".into(),
        transition: Some(transition.into()),
        reason: None,
        message: None,
    }
}

pub(crate) fn apply_result(
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

pub(crate) fn apply_result_to(
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
    tracing::info!(job_id = %job.id, "job {}: result of task {} from worker {worker_id}: {}", job.id, result.task_id, rxon::text::for_log(&status));
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
        events.push(task_event(
            EventKind::Cancelled,
            format!("worker {worker_id} cancelled task {}", result.task_id),
            crate::job::TaskRef::of(&job.tasks[idx], Some(rxon::status::CANCELLED)),
        ));
        "cancelled_handled"
    } else {
        let data = result.data.clone().unwrap_or_default();
        if let Some(files) = &result.data_metadata {
            crate::objects::merge_files(job, files);
        }
        events.push(task_event(
            EventKind::TaskResult,
            format!("task {} returned {status}", result.task_id),
            crate::job::TaskRef::of(&job.tasks[idx], Some(&status)),
        ));
        task_succeeded(shared, st, job, idx, &status, data, &mut events)
    };
    commit(st, job, events, None);
    accepted(transition)
}

pub(crate) fn release(st: &mut EngineState, worker_id: &str, task_id: &str) {
    st.release(worker_id, task_id);
}

pub(crate) fn task_succeeded(
    shared: &Shared,
    st: &mut EngineState,
    job: &mut Job,
    idx: usize,
    status: &str,
    data: Object,
    events: &mut Vec<JobEvent>,
) -> &'static str {
    let Some(bp) = shared.blueprint_of(job) else {
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
            std::sync::Arc::make_mut(&mut job.results)
                .insert(job.current_state.clone(), Value::Object(data.clone()));
            job.result = Some(data.into());
            let to = to.clone();
            enter_state(job, &to, Some(status), events);
            advance(shared, st, job, events);
            "success_transition"
        }
        Action::Parallel { next, .. } => {
            if status != rxon::status::SUCCESS {
                return not_success(st, job, "branch", status, events);
            }
            job.tasks[idx].result = Some(data.into());
            if job.tasks.iter().any(|t| t.result.is_none()) {
                return "parallel_branch_accepted";
            }
            let gathered: Object = job
                .tasks
                .iter()
                .map(|t| {
                    (
                        t.branch.clone().unwrap_or_default(),
                        Value::Object(t.result.as_deref().cloned().unwrap_or_default()),
                    )
                })
                .collect();
            std::sync::Arc::make_mut(&mut job.results)
                .insert(job.current_state.clone(), Value::Object(gathered.clone()));
            job.result = Some(gathered.into());
            let next = next.clone();
            enter_state(job, &next, Some("success"), events);
            advance(shared, st, job, events);
            "success_transition"
        }
        Action::Map(spec) => {
            if status != rxon::status::SUCCESS {
                return not_success(st, job, "map element", status, events);
            }
            if let Flow::Advance = item_succeeded(shared, st, job, spec, idx, data, events) {
                advance(shared, st, job, events);
                return "success_transition";
            }
            "map_element_accepted"
        }
        _ => "unexpected_result",
    }
}

/// A fan-out's task (a branch, a map element) returned a status other than
/// `success`: the job fails.
fn not_success(
    st: &mut EngineState,
    job: &mut Job,
    what: &str,
    status: &str,
    events: &mut Vec<JobEvent>,
) -> &'static str {
    let msg = format!(
        "{what} tasks must return `success`, got `{status}` in state {}",
        job.current_state
    );
    let code = own_code::UNHANDLED_STATUS;
    end_failed(st, job, JobStatus::Failed, code, &msg, events);
    "unhandled_status_failure"
}

/// How a failure code is handled.
pub(crate) enum FailureClass {
    /// Worth another attempt.
    Retry,
    /// The input is wrong: the failure path, or `failed`.
    Invalid,
    /// Needs a human: `quarantined`.
    Permanent,
}

pub(crate) fn classify(code: &str) -> FailureClass {
    match code {
        error_code::INVALID_INPUT | error_code::INTEGRITY_MISMATCH => FailureClass::Invalid,
        error_code::PERMANENT
        | error_code::SECURITY
        | error_code::DEPENDENCY
        | error_code::CONTRACT_VIOLATION => FailureClass::Permanent,
        _ => FailureClass::Retry,
    }
}

pub(crate) fn task_failed(
    shared: &Shared,
    st: &mut EngineState,
    job: &mut Job,
    idx: usize,
    code: &str,
    message: &str,
    events: &mut Vec<JobEvent>,
) {
    let bp = shared.blueprint_of(job);
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
    events.push(task_event(
        EventKind::TaskFailed,
        format!(
            "task {} (attempt {}) failed: {code}: {message}",
            task.task_id, task.attempt
        ),
        crate::job::TaskRef::of(task, Some(code)),
    ));
    tracing::warn!(job_id = %job.id, "job {}: task {} (attempt {}) failed: {}: {}", job.id, task.task_id, task.attempt, rxon::text::for_log(code), rxon::text::for_log(message));
    let class = classify(code);
    if matches!(class, FailureClass::Retry) && task.attempt < spec_retry.max_attempts {
        task.attempt += 1;
        task.task_id = new_task_id();
        task.worker_id = None;
        task.picked_up_at = None;
        let delay = spec_retry.backoff(task.attempt);
        let (task_id, attempt) = (task.task_id.clone(), task.attempt);
        if job.tasks.len() == 1 && job.tasks[0].branch.is_none() && job.tasks[0].index.is_none() {
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
            EventKind::RetryScheduled,
            format!(
                "attempt {attempt} of {} in {delay:?} as task {task_id}",
                spec_retry.max_attempts
            ),
        ));
        return;
    }
    // Failed for good.
    if let Some(Action::Map(spec)) = bp
        .as_ref()
        .and_then(|bp| bp.state(&job.current_state))
        .map(|s| &s.action)
        && !spec.fail_fast
    {
        if let Flow::Advance = item_failed(shared, st, job, spec, idx, (code, message), events) {
            advance(shared, st, job, events);
        }
        return;
    }
    job.error = Some(JobError {
        code: code.into(),
        message: message.into(),
    });
    let failure_target = bp
        .as_ref()
        .and_then(|bp| match &bp.state(&job.current_state)?.action {
            Action::Dispatch { on, .. } => on.get(rxon::status::FAILURE).cloned(),
            Action::Parallel { on_failure, .. } => on_failure.clone(),
            Action::Map(m) => m.on_failure.clone(),
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
                    EventKind::RetriesExhausted,
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
