//! Timers (dispatch and result timeouts, retries, worker expiry) and
//! recovery after a restart.

use super::*;

pub(crate) fn fire(shared: &Shared, st: &mut EngineState, timer: Timer) {
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
                let mut events = Vec::new();
                requeue(shared, st, &mut j, idx, &mut events);
                commit(st, &mut j, events, None);
            }
            put(st, j);
        }
        Timer::ChildEnded { job, outcome } => child_ended(shared, st, job, &outcome),
        Timer::CancelChild { job } => cancel_with_parent(st, job),
        Timer::Wake { job, step } => {
            let Some(mut j) = take(st, job) else { return };
            // A job cancelled (or moved on) while it slept or waited stays
            // as it is; a waiting one whose time is up takes its timeout
            // path. (A timer stored before steps were recorded has none.)
            let current = step.is_empty() || step == j.transitions.to_string();
            if !current {
            } else if j.status == JobStatus::Scheduled {
                // Its start time: it starts.
                let mut events = Vec::new();
                j.wake_at = None;
                j.status = JobStatus::Pending;
                advance(shared, st, &mut j, &mut events);
                commit(st, &mut j, events, None);
            } else if j.status == JobStatus::Sleeping {
                let mut events = Vec::new();
                wake(shared, st, &mut j, &mut events);
                commit(st, &mut j, events, None);
            } else if is_waiting(&j) {
                let mut events = Vec::new();
                wait_timed_out(shared, st, &mut j, &mut events);
                commit(st, &mut j, events, None);
            }
            put(st, j);
        }
    }
}

/// A sleeping job's time is up: on to its `sleep` state's `next`.
fn wake(shared: &Shared, st: &mut EngineState, job: &mut Job, events: &mut Vec<JobEvent>) {
    job.wake_at = None;
    job.status = JobStatus::Running;
    let next = shared.blueprint_of(job).and_then(|bp| {
        match bp.state(&job.current_state).map(|s| &s.action) {
            Some(Action::Sleep { next, .. }) => Some(next.clone()),
            _ => None,
        }
    });
    match next {
        Some(to) => {
            enter_state(job, &to, Some("woken"), events);
            advance(shared, st, job, events);
        }
        None => {
            let msg = format!(
                "state {} of blueprint {} v{} is not a sleep state any more",
                job.current_state, job.blueprint, job.blueprint_version
            );
            blueprint_error(st, job, &msg, events);
        }
    }
}

pub(crate) fn sweep_workers(shared: &Shared, st: &mut EngineState) {
    let now = Instant::now();
    let dead: Vec<String> = st
        .workers
        .values()
        .filter(|w| now.saturating_duration_since(w.last_seen) > w.ttl)
        .map(|w| w.worker_id.clone())
        .collect();
    for worker_id in dead {
        let Some(worker) = st.workers.remove(&worker_id) else {
            continue;
        };
        let why = if worker.channel_lost {
            tracing::warn!(
                "worker {worker_id} closed its task channel and was not heard from within {:?}; dropping it and requeueing its {} task(s)",
                shared.settings.channel_grace,
                worker.in_flight.len()
            );
            "its worker's task channel closed and it did not come back"
        } else {
            tracing::warn!(
                "worker {worker_id} has not been heard from for {:?}; dropping it and requeueing its {} task(s)",
                worker.ttl,
                worker.in_flight.len()
            );
            "its worker stopped heartbeating"
        };
        requeue_held(shared, st, &worker.in_flight, why);
    }
}

/// Puts tasks a worker held (already taken out of its in-flight map) back in
/// the queue, under new task ids (a late result for the old id is then
/// ignored as stale), and drops their leases.
pub(crate) fn requeue_held(
    shared: &Shared,
    st: &mut EngineState,
    held: &BTreeMap<String, Held>,
    why: &str,
) {
    for h in held.values() {
        st.drop_lease(h);
    }
    let job_ids: BTreeSet<Uuid> = held.values().map(|h| h.job).collect();
    for id in job_ids {
        let Some(mut job) = take(st, id) else {
            continue;
        };
        if job.status.is_terminal() {
            put(st, job);
            continue;
        }
        let mut events = Vec::new();
        for idx in 0..job.tasks.len() {
            if !held.contains_key(&job.tasks[idx].task_id) || job.tasks[idx].result.is_some() {
                continue;
            }
            let old = std::mem::replace(&mut job.tasks[idx].task_id, new_task_id());
            tracing::info!(job_id = %job.id, "task {old} requeued as {}: {why}", job.tasks[idx].task_id);
            let mut lost = crate::job::TaskRef::of(&job.tasks[idx], Some("lost"));
            lost.task_id = old.clone();
            events.push(task_event(
                EventKind::TaskRequeued,
                format!("task {old} requeued as {}: {why}", job.tasks[idx].task_id),
                lost,
            ));
            requeue(shared, st, &mut job, idx, &mut events);
        }
        if !events.is_empty() {
            commit(st, &mut job, events, None);
        }
        put(st, job);
    }
}

/// Puts a job loaded from storage back to work after a restart.
pub(crate) fn recover(shared: &Shared, st: &mut EngineState, mut job: Job) {
    let mut events = vec![event(
        EventKind::Recovered,
        "orchestrator restarted; job resumed",
    )];
    // A stored job whose bounds are out of range (written by an older
    // version, or edited by hand) fails with a clear error, once.
    for (name, v) in [
        ("dispatch_timeout", job.dispatch_timeout),
        ("result_timeout", job.result_timeout),
    ] {
        if let Some(Err(e)) = v.map(|v| crate::secs::timeout(name, v)) {
            let msg = format!("the stored job is invalid: {e}");
            end_failed(
                st,
                &mut job,
                JobStatus::Failed,
                own_code::INVALID_JOB,
                &msg,
                &mut events,
            );
            commit(st, &mut job, events, None);
            put(st, job);
            return;
        }
    }
    match job.status {
        // Its timer again, at the same time (or at once if that passed).
        JobStatus::Scheduled => match job.wake_at {
            Some(at) => arm_wake(st, &job, at),
            None => {
                job.status = JobStatus::Pending;
                advance(shared, st, &mut job, &mut events);
            }
        },
        JobStatus::Sleeping => match job.wake_at {
            Some(at) => arm_wake(st, &job, at),
            None => wake(shared, st, &mut job, &mut events),
        },
        // Still waiting (its approval token too); its timeout again.
        JobStatus::WaitingForHuman | JobStatus::WaitingForSignal => {
            if let Some(at) = job.wake_at {
                arm_wake(st, &job, at);
            }
        }
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
                requeue(shared, st, &mut job, idx, &mut events);
            }
        }
    }
    commit(st, &mut job, events, None);
    put(st, job);
}
