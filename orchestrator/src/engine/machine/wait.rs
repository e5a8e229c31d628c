//! `wait` states: the job waits, costing no worker, for a human's decision
//! (`approval`: status `waiting_for_human`, a single-use approval token) or
//! a client's signal (`waiting_for_signal`), or for its timeout.

use super::*;
use crate::blueprint::WaitSpec;

/// Who sends a decision or signal.
#[derive(Debug, Clone)]
pub enum SignalAuth {
    /// The job's client (by its token).
    Owner(String),
    /// Anyone holding the job's approval token (approvals only).
    ApprovalToken(String),
}

/// A decision or signal for a waiting job.
#[derive(Debug, Clone)]
pub struct Signal {
    pub job: Uuid,
    /// The decision or signal name (a key of the state's `wait.on`).
    pub name: String,
    /// Lands in `results.<state>`.
    pub payload: Object,
    pub by: SignalAuth,
    /// Sent to avtomatika's approval endpoint: the job must wait for a human.
    pub approval: bool,
}

/// Enters a `wait` state.
pub(crate) fn start_wait(
    st: &mut EngineState,
    job: &mut Job,
    spec: &WaitSpec,
    events: &mut Vec<JobEvent>,
) {
    job.status = if spec.approval {
        job.approval_token = Some(Uuid::new_v4().simple().to_string());
        JobStatus::WaitingForHuman
    } else {
        JobStatus::WaitingForSignal
    };
    let names: Vec<&str> = spec.on.keys().map(String::as_str).collect();
    let mut message = format!(
        "waiting in state {} for {} {}",
        job.current_state,
        if spec.approval {
            "a decision"
        } else {
            "a signal"
        },
        names.join(" or ")
    );
    if let Some((timeout, _)) = &spec.timeout {
        let at = Utc::now() + chrono::Duration::from_std(*timeout).unwrap_or_default();
        job.wake_at = Some(at);
        arm_wake(st, job, at);
        message.push_str(&format!(" until {}", at.to_rfc3339()));
    }
    tracing::info!(job_id = %job.id, "job {}: {message}", job.id);
    events.push(event(EventKind::Waiting, message));
}

/// Whether `job` is in a `wait` state.
pub(crate) fn is_waiting(job: &Job) -> bool {
    matches!(
        job.status,
        JobStatus::WaitingForHuman | JobStatus::WaitingForSignal
    )
}

/// A decision or signal arrives: the job goes to the state its `wait.on`
/// names, with the payload as the state's result.
pub(crate) fn signal(
    shared: &Shared,
    st: &mut EngineState,
    signal: &Signal,
) -> Result<(), EngineError> {
    let Some(mut job) = take(st, signal.job) else {
        return Err(EngineError::JobNotFound);
    };
    let result = deliver(shared, st, &mut job, signal);
    put(st, job);
    result
}

fn deliver(
    shared: &Shared,
    st: &mut EngineState,
    job: &mut Job,
    signal: &Signal,
) -> Result<(), EngineError> {
    match &signal.by {
        SignalAuth::Owner(owner) if *owner != job.owner => return Err(EngineError::JobNotFound),
        SignalAuth::ApprovalToken(token)
            if job.approval_token.as_deref() != Some(token.as_str()) =>
        {
            return Err(EngineError::BadApprovalToken);
        }
        _ => {}
    }
    let waiting = if signal.approval {
        job.status == JobStatus::WaitingForHuman
    } else {
        is_waiting(job)
    };
    if !waiting {
        return Err(EngineError::NotWaiting(if signal.approval {
            "Job is not in a state that can be approved".into()
        } else {
            format!(
                "Job is not waiting for a signal (status {}, state {})",
                job.status, job.current_state
            )
        }));
    }
    let Some(bp) = shared.blueprint_of(job) else {
        return Err(EngineError::NotWaiting(format!(
            "blueprint {} is not loaded",
            job.blueprint
        )));
    };
    let Some(Action::Wait(spec)) = bp.state(&job.current_state).map(|s| &s.action) else {
        return Err(EngineError::NotWaiting(format!(
            "state {} of blueprint {} is not a wait state any more",
            job.current_state, job.blueprint
        )));
    };
    let Some(to) = spec.on.get(&signal.name) else {
        let names: Vec<&str> = spec.on.keys().map(String::as_str).collect();
        return Err(EngineError::UnknownSignal(format!(
            "state {} waits for {}; not for {:?}",
            job.current_state,
            names.join(", "),
            rxon::text::clip(&signal.name, MAX_SIGNAL_NAME_SHOWN)
        )));
    };
    let to = to.clone();
    let who = match &signal.by {
        SignalAuth::Owner(owner) => format!("client {owner}"),
        SignalAuth::ApprovalToken(_) => "the approval token's holder".to_string(),
    };
    let kind = if signal.approval {
        "decision"
    } else {
        "signal"
    };
    tracing::info!(job_id = %job.id, "job {}: {kind} {} from {who} moves it to {to}", job.id, signal.name);
    let mut events = vec![event(
        EventKind::Signal,
        format!(
            "{kind} {} from {who}: {}",
            signal.name,
            rxon::text::json_preview(&Value::Object(signal.payload.clone()))
        ),
    )];
    job.approval_token = None;
    job.wake_at = None;
    std::sync::Arc::make_mut(&mut job.results).insert(
        job.current_state.clone(),
        Value::Object(signal.payload.clone()),
    );
    job.result = Some(signal.payload.clone().into());
    enter_state(job, &to, Some(&signal.name), &mut events);
    advance(shared, st, job, &mut events);
    commit(st, job, events, None);
    Ok(())
}

/// Longest signal name quoted back in an error.
const MAX_SIGNAL_NAME_SHOWN: usize = 80;

/// A waiting job's timeout passed: on to its `on_timeout` state.
pub(crate) fn wait_timed_out(
    shared: &Shared,
    st: &mut EngineState,
    job: &mut Job,
    events: &mut Vec<JobEvent>,
) {
    job.wake_at = None;
    job.approval_token = None;
    let target = shared.blueprint_of(job).and_then(|bp| {
        match bp.state(&job.current_state).map(|s| &s.action) {
            Some(Action::Wait(w)) => w.timeout.as_ref().map(|(_, to)| to.clone()),
            _ => None,
        }
    });
    match target {
        Some(to) => {
            enter_state(job, &to, Some("timeout"), events);
            advance(shared, st, job, events);
        }
        None => {
            let msg = format!(
                "state {} of blueprint {} v{} is not a wait state with a timeout any more",
                job.current_state, job.blueprint, job.blueprint_version
            );
            blueprint_error(st, job, &msg, events);
        }
    }
}
