//! `run` states: a job starts another blueprint as a child job and waits
//! (`waiting_for_sub_job`) for its end.
//!
//! The child is created in the parent's event. When it ends, the event
//! that ended it arms a [`Timer::ChildEnded`] for the parent carrying the
//! child's outcome: durable with the child's end (the timers table on
//! PostgreSQL; on one instance, recovery finds a waiting parent whose child
//! ended), and fired as an event of the parent's own, so the two jobs are
//! never changed in one event. A cancelled parent cancels its child the
//! same way ([`Timer::CancelChild`]), down the chain.

use super::*;
use crate::blueprint::RunSpec;
use crate::job::{JobOptions, ParentRef};

/// What a parent learns of its child's end.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ChildOutcome {
    pub child: Uuid,
    pub blueprint: String,
    /// The parent's step (transition count) that started the child.
    pub step: u32,
    pub status: JobStatus,
    #[serde(default)]
    pub result: Object,
    #[serde(default)]
    pub error: Option<JobError>,
}

/// Enters a `run` state: creates the child and waits for it.
pub(crate) fn start_child(
    shared: &Shared,
    st: &mut EngineState,
    job: &mut Job,
    spec: &RunSpec,
    events: &mut Vec<JobEvent>,
) {
    let max = shared.settings.max_job_depth;
    if job.depth >= max {
        let msg = format!(
            "state {} would start a child job {} levels deep; at most {max} are allowed (max_job_depth)",
            job.current_state,
            job.depth + 1
        );
        return end_failed(
            st,
            job,
            JobStatus::Failed,
            own_code::DEPTH_LIMIT,
            &msg,
            events,
        );
    }
    let Some(bp) = shared.catalog.current(&spec.blueprint) else {
        let msg = format!(
            "state {} runs blueprint {}, which is not loaded",
            job.current_state, spec.blueprint
        );
        return blueprint_error(st, job, &msg, events);
    };
    let ctx = job.expr_context(&shared.settings.clients);
    let mut data = Object::new();
    for (name, value) in &spec.data {
        match value.eval(&ctx) {
            Ok(v) => {
                data.insert(name.clone(), v);
            }
            Err(e) => {
                let msg = format!("state {} run.data {name}: {e}", job.current_state);
                return blueprint_error(st, job, &msg, events);
            }
        }
    }
    if let Some(input) = &bp.contract.input
        && let Err(e) = input.check(&Value::Object(data.clone()))
    {
        let msg = format!(
            "the data state {} gives blueprint {} does not match its input_schema: {e}",
            job.current_state, bp.name
        );
        return child_failed(
            shared,
            st,
            job,
            spec,
            error_code::INVALID_INPUT,
            &msg,
            events,
        );
    }
    let child = Uuid::now_v7();
    let new = NewJob {
        blueprint: bp.name.clone(),
        owner: job.owner.clone(),
        initial_data: data,
        webhook_url: None,
        dispatch_timeout: job.dispatch_timeout,
        result_timeout: job.result_timeout,
        options: JobOptions {
            max_transitions: None,
            ..job.options.clone()
        },
        parent: Some(ParentRef {
            job: job.id,
            state: job.current_state.clone(),
            step: job.transitions,
        }),
        depth: job.depth + 1,
        id: None,
        start_at: None,
        max_active: None,
    };
    job.status = JobStatus::WaitingForSubJob;
    job.child = Some(child);
    tracing::info!(job_id = %job.id, "job {}: state {} started child job {child} ({})", job.id, job.current_state, bp.name);
    events.push(event(
        EventKind::ChildStarted,
        format!("child job {child} ({}) started", bp.name),
    ));
    create(shared, st, child, &bp, new);
}

/// When a child job ends: tells its parent (once), by a timer of the
/// parent's (see the module's documentation).
pub(crate) fn tell_parent(st: &mut EngineState, child: &mut Job) {
    if child.parent_told || !child.status.is_terminal() {
        return;
    }
    arm_child_ended(st, child);
    child.parent_told = true;
}

/// The timer that tells `child`'s parent it ended (again, after a restart
/// that lost the parent's change).
pub(crate) fn arm_child_ended(st: &mut EngineState, child: &Job) {
    let Some(parent) = &child.parent else { return };
    let outcome = ChildOutcome {
        child: child.id,
        blueprint: child.blueprint.clone(),
        step: parent.step,
        status: child.status,
        result: child.result.as_deref().cloned().unwrap_or_default(),
        error: child.error.clone(),
    };
    let Ok(outcome) = serde_json::to_string(&outcome) else {
        return;
    };
    st.add_timer(
        Instant::now(),
        Timer::ChildEnded {
            job: parent.job,
            outcome,
        },
    );
}

/// The parent learns its child ended: on to `success` or `failure`.
pub(crate) fn child_ended(shared: &Shared, st: &mut EngineState, parent: Uuid, outcome: &str) {
    let Ok(outcome) = serde_json::from_str::<ChildOutcome>(outcome) else {
        tracing::warn!(job_id = %parent, "job {parent}: an unreadable child outcome was dropped");
        return;
    };
    let Some(mut job) = take(st, parent) else {
        return;
    };
    // A parent cancelled, or moved on, meanwhile stays as it is.
    let waiting = job.status == JobStatus::WaitingForSubJob
        && job.child == Some(outcome.child)
        && job.transitions == outcome.step;
    if waiting {
        let mut events = Vec::new();
        resume(shared, st, &mut job, &outcome, &mut events);
        commit(st, &mut job, events, None);
    }
    put(st, job);
}

fn resume(
    shared: &Shared,
    st: &mut EngineState,
    job: &mut Job,
    outcome: &ChildOutcome,
    events: &mut Vec<JobEvent>,
) {
    job.child = None;
    let Some(bp) = shared.blueprint_of(job) else {
        let msg = format!("blueprint {} is not loaded", job.blueprint);
        return blueprint_error(st, job, &msg, events);
    };
    let Some(Action::Run(spec)) = bp.state(&job.current_state).map(|s| &s.action) else {
        let msg = format!(
            "state {} of blueprint {} v{} is not a run state any more",
            job.current_state, job.blueprint, job.blueprint_version
        );
        return blueprint_error(st, job, &msg, events);
    };
    events.push(event(
        EventKind::ChildEnded,
        format!(
            "child job {} ({}) ended {}",
            outcome.child, outcome.blueprint, outcome.status
        ),
    ));
    std::sync::Arc::make_mut(&mut job.results).insert(
        job.current_state.clone(),
        Value::Object(outcome.result.clone()),
    );
    job.result = Some(outcome.result.clone().into());
    job.status = JobStatus::Running;
    if outcome.status == JobStatus::Finished {
        let to = spec.on["success"].clone();
        enter_state(job, &to, Some("success"), events);
        return advance(shared, st, job, events);
    }
    let error = outcome.error.clone().unwrap_or(JobError {
        code: "FAILED".into(),
        message: String::new(),
    });
    let msg = format!(
        "child job {} ({}) ended {}: {}: {}",
        outcome.child, outcome.blueprint, outcome.status, error.code, error.message
    );
    child_failed(shared, st, job, spec, own_code::CHILD_FAILED, &msg, events);
}

/// The child could not run or did not finish: the `failure` transition,
/// else the parent fails with it.
fn child_failed(
    shared: &Shared,
    st: &mut EngineState,
    job: &mut Job,
    spec: &RunSpec,
    code: &str,
    message: &str,
    events: &mut Vec<JobEvent>,
) {
    job.child = None;
    job.error = Some(JobError {
        code: code.into(),
        message: message.into(),
    });
    match spec.on.get(rxon::status::FAILURE) {
        Some(to) => {
            let to = to.clone();
            job.status = JobStatus::Running;
            enter_state(job, &to, Some(rxon::status::FAILURE), events);
            advance(shared, st, job, events);
        }
        None => end_failed(st, job, JobStatus::Failed, code, message, events),
    }
}

/// A job that ends while a child runs (cancelled): its child is cancelled
/// too, by a timer of the child's.
pub(crate) fn cancel_child_of(st: &mut EngineState, job: &mut Job) {
    if let Some(child) = job.child.take() {
        st.add_timer(Instant::now(), Timer::CancelChild { job: child });
    }
}

/// Cancels `child` because its parent was cancelled (and its own child
/// after it).
pub(crate) fn cancel_with_parent(st: &mut EngineState, child: Uuid) {
    let Some(mut job) = take(st, child) else {
        return;
    };
    if !job.status.is_terminal() {
        job.status = JobStatus::Cancelled;
        job.finished_at = Some(Utc::now());
        forget_tasks(st, &job);
        let parent = job
            .parent
            .as_ref()
            .map(|p| p.job.to_string())
            .unwrap_or_default();
        let message = format!("cancelled with its parent job {parent}");
        job.error = Some(JobError {
            code: own_code::CANCELLED.into(),
            message: message.clone(),
        });
        // Its parent ended: nobody waits for this one's end.
        job.parent_told = true;
        cancel_child_of(st, &mut job);
        tracing::info!(job_id = %job.id, "job {} {message}", job.id);
        let events = vec![event(EventKind::Cancelled, message)];
        commit(st, &mut job, events, None);
    }
    put(st, job);
}
