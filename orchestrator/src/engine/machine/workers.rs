//! Workers and clients acting on jobs: registration, heartbeats, events,
//! cancel, and why a job waits.

use super::*;

pub(crate) fn cancel(st: &mut EngineState, id: Uuid, owner: &str) -> Result<(), EngineError> {
    let Some(mut job) = take(st, id) else {
        return Err(EngineError::JobNotFound);
    };
    let result = if job.owner != owner {
        Err(EngineError::JobNotFound)
    } else if job.status.is_terminal() {
        Err(EngineError::AlreadyEnded(job.status))
    } else {
        job.status = JobStatus::Cancelled;
        job.finished_at = Some(Utc::now());
        // The worker running it is no longer its holder: its next heartbeat
        // lists the task and is answered with `cancel_task_ids`.
        forget_tasks(st, &job);
        cancel_child_of(st, &mut job);
        job.error = Some(JobError {
            code: own_code::CANCELLED.into(),
            message: "cancelled by the client".into(),
        });
        tracing::info!(job_id = %job.id, "job {} cancelled by its client", job.id);
        let events = vec![event(EventKind::Cancelled, "cancelled by the client")];
        commit(st, &mut job, events, None);
        Ok(())
    };
    put(st, job);
    result
}

/// Whether [`waiting_reason`] reads the registered workers for `job`: only
/// a job waiting for a worker with a task nobody took yet. For any other
/// job the reason comes from the job alone (a shared database is then not
/// asked for its worker list at every poll).
pub(crate) fn waits_for_worker(job: &Job) -> bool {
    matches!(
        job.status,
        JobStatus::WaitingForWorker | JobStatus::WaitingForParallelTasks
    ) && job
        .tasks
        .iter()
        .any(|t| t.result.is_none() && t.worker_id.is_none())
}

pub(crate) fn waiting_reason(st: &EngineState, job: &Job) -> Option<String> {
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
                if let (Some(req), true) = (&task.requires, offering > 0) {
                    let unmet: Vec<String> = st
                        .workers
                        .values()
                        .filter(|w| w.serves(&task.task_type))
                        .filter_map(|w| {
                            req.unmet(w, &task.task_type)
                                .map(|why| format!("{}: {why}", w.worker_id))
                        })
                        .collect();
                    let meeting = offering - unmet.len();
                    reasons.push(if meeting == 0 {
                        // The first few workers' reasons, enough to see why.
                        let shown: Vec<&str> = unmet.iter().take(3).map(String::as_str).collect();
                        format!(
                            "no registered worker meets what task {} ({}) requires ({}{})",
                            task.task_id,
                            task.task_type,
                            shown.join("; "),
                            if unmet.len() > 3 { "; …" } else { "" }
                        )
                    } else {
                        format!(
                            "waiting for a free worker offering task type {} that meets what it requires ({meeting} registered meet it)",
                            task.task_type
                        )
                    });
                    continue;
                }
                if let (Some(r), true) = (&task.rate, offering > 0) {
                    reasons.push(format!(
                        "waiting for a free worker offering task type {} ({offering} registered); at most {} tasks per second with rate key {} are handed out (bursts of {})",
                        task.task_type, r.per_second, r.key, r.burst
                    ));
                    continue;
                }
                if let (Some(k), true) = (&task.concurrency, offering > 0) {
                    reasons.push(format!(
                        "waiting for a free worker offering task type {} ({offering} registered); at most {} tasks with concurrency key {} run at once",
                        task.task_type, k.max, k.key
                    ));
                    continue;
                }
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
        JobStatus::Sleeping => job.wake_at.map(|at| {
            format!(
                "sleeping in state {} until {}",
                job.current_state,
                at.to_rfc3339()
            )
        }),
        JobStatus::Scheduled => job
            .wake_at
            .map(|at| format!("scheduled to start at {}", at.to_rfc3339())),
        JobStatus::WaitingForSubJob => job.child.map(|c| {
            format!(
                "waiting in state {} for child job {c} to end",
                job.current_state
            )
        }),
        JobStatus::WaitingForHuman | JobStatus::WaitingForSignal => Some(format!(
            "waiting in state {} for {}{}",
            job.current_state,
            if job.status == JobStatus::WaitingForHuman {
                "a decision"
            } else {
                "a signal"
            },
            job.wake_at
                .map(|at| format!(" until {}", at.to_rfc3339()))
                .unwrap_or_default()
        )),
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

/// The liveness a worker gets: two of the heartbeat intervals it declares
/// (`metadata.heartbeat_interval_seconds`) plus a margin, else the default.
/// At most `max_worker_ttl_seconds` (a longer declared interval is cut,
/// with a warning).
fn worker_ttl(shared: &Shared, reg: &rxon::WorkerRegistration) -> Duration {
    let max = shared.settings.max_worker_ttl;
    let declared = reg
        .metadata
        .as_ref()
        .and_then(|m| m.get("heartbeat_interval_seconds"))
        .and_then(Value::as_f64)
        .and_then(|s| crate::secs::timeout("heartbeat_interval_seconds", s).ok())
        .map(|interval| interval.saturating_mul(2) + super::super::TTL_MARGIN);
    match declared {
        Some(ttl) if ttl > max => {
            tracing::warn!(
                "worker {} declares a heartbeat interval that would keep it alive {ttl:?} without a heartbeat; it gets {max:?} (max_worker_ttl_seconds)",
                reg.worker_id
            );
            max
        }
        Some(ttl) => ttl,
        None => shared.settings.worker_ttl.min(max),
    }
}

pub(crate) fn register_worker(
    shared: &Shared,
    st: &mut EngineState,
    reg: &rxon::WorkerRegistration,
) {
    let now = Utc::now();
    let previous = st.workers.remove(&reg.worker_id);
    let instance_id = reg
        .metadata
        .as_ref()
        .and_then(|m| m.get("instance_id"))
        .and_then(Value::as_str)
        .map(|s| rxon::text::clip(s, 128).into_owned());
    let names: Vec<&str> = reg
        .supported_skills
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    let ttl = worker_ttl(shared, reg);
    tracing::info!(
        "worker {} registered{} (type {}), offering {}; considered gone after {ttl:?} without a heartbeat",
        reg.worker_id,
        if previous.is_some() { " again" } else { "" },
        rxon::text::for_log(&reg.worker_type),
        rxon::text::for_log(&names.join(", "))
    );
    // A new process behind the same id holds none of the old one's tasks.
    let restarted = previous.as_ref().is_some_and(|p| {
        p.instance_id.is_some() && p.instance_id != instance_id && !p.in_flight.is_empty()
    });
    let mut in_flight = BTreeMap::new();
    if let Some(p) = &previous {
        if restarted {
            tracing::warn!(
                "worker {} restarted (new instance); its {} unfinished task(s) go back to the queue",
                reg.worker_id,
                p.in_flight.len()
            );
        } else {
            in_flight = p.in_flight.clone();
        }
    }
    let record = WorkerRecord {
        worker_id: reg.worker_id.clone(),
        worker_type: reg.worker_type.clone(),
        skills: reg.supported_skills.clone(),
        status: "idle".into(),
        capabilities: reg.capabilities.clone(),
        resources: reg.resources.clone(),
        installed_software: reg.installed_software.clone(),
        registered_at: previous.as_ref().map(|p| p.registered_at).unwrap_or(now),
        last_heartbeat_at: now,
        last_seen: Instant::now(),
        ttl,
        instance_id,
        channel_lost: false,
        in_flight,
        wake: previous
            .as_ref()
            .map(|p| p.wake.clone())
            .unwrap_or_else(|| Arc::new(tokio::sync::Notify::new())),
        plugins: crate::engine::workers::plugin_reports(reg.metadata.as_ref()),
        usage: previous.as_ref().and_then(|p| p.usage.clone()),
    };
    // Tasks already waiting for one of its skills can go now.
    if names
        .iter()
        .any(|n| st.queues.get(*n).is_some_and(|q| !q.is_empty()))
    {
        record.wake.notify_one();
    }
    st.workers.insert(reg.worker_id.clone(), record);
    if let (true, Some(p)) = (restarted, previous) {
        requeue_held(shared, st, &p.in_flight, "its worker restarted");
    }
}

/// The task channel of `worker_id` closed: it is gone `grace` from now
/// (from when it was last heard from, if that is sooner) unless heard from.
pub(crate) fn channel_lost(st: &mut EngineState, worker_id: &str, grace: Duration) {
    let Some(worker) = st.workers.get_mut(worker_id) else {
        return;
    };
    let now = Instant::now();
    if let Some(gone_at) = (now + grace).checked_sub(worker.ttl)
        && gone_at < worker.last_seen
    {
        worker.last_seen = gone_at;
    }
    worker.channel_lost = true;
    if !worker.in_flight.is_empty() {
        tracing::warn!(
            "the task channel of worker {worker_id} closed while it held {} task(s); they go back to the queue unless it is heard from within {grace:?} (channel_grace_seconds)",
            worker.in_flight.len()
        );
    }
}

pub(crate) fn heartbeat(
    shared: &Shared,
    st: &mut EngineState,
    worker_id: &str,
    hb: Option<&rxon::Heartbeat>,
) -> Option<rxon::HeartbeatResponse> {
    let worker = st.workers.get_mut(worker_id)?;
    let now = Instant::now();
    worker.last_seen = now;
    if std::mem::take(&mut worker.channel_lost) {
        tracing::info!("worker {worker_id} is back after its task channel closed");
    }
    worker.last_heartbeat_at = Utc::now();
    let Some(hb) = hb else {
        return Some(rxon::HeartbeatResponse {
            status: "ttl_refreshed".into(),
            ..Default::default()
        });
    };
    if let Some(usage) = &hb.usage
        && serde_json::to_vec(usage)
            .is_ok_and(|b| b.len() <= crate::engine::workers::MAX_USAGE_BYTES)
    {
        worker.usage = Some(usage.clone());
    }
    let status = rxon::text::clip(&hb.status, 64).into_owned();
    if worker.status != status {
        tracing::info!("worker {worker_id} is {status}");
    } else {
        tracing::debug!("heartbeat from worker {worker_id} ({status})");
    }
    worker.status = status;
    if let Some(skills) = &hb.supported_skills {
        worker.skills = skills.clone();
    }
    let Some(reported) = hb.current_tasks.as_ref() else {
        return Some(rxon::HeartbeatResponse {
            status: "ok".into(),
            ..Default::default()
        });
    };
    let reported: BTreeSet<&str> = reported.iter().map(String::as_str).collect();
    // Tasks it lists that it does not hold (ended, cancelled, taken back): stop them.
    let cancel: Vec<String> = reported
        .iter()
        .filter(|id| !worker.in_flight.contains_key(**id))
        .map(|id| id.to_string())
        .collect();
    // Tasks it holds but no longer lists (a result lost on the way, a task it
    // could not run): back to the queue, once they had time to arrive. A
    // goodbye (`offline`) returns them at once: a poll answered while the
    // worker was stopping delivered a task it will never run.
    let grace = if hb.status == "offline" {
        Duration::ZERO
    } else {
        shared.settings.unlisted_task_grace
    };
    let lost: BTreeMap<String, Held> = worker
        .in_flight
        .extract_if(.., |id, held| {
            !reported.contains(id.as_str()) && now.saturating_duration_since(held.since) >= grace
        })
        .collect();
    if !lost.is_empty() && hb.status == "offline" {
        tracing::warn!(
            "worker {worker_id} said goodbye without {} task(s) it was handed; they go back to the queue",
            lost.len()
        );
        requeue_held(shared, st, &lost, "its worker stopped without running it");
    } else if !lost.is_empty() {
        tracing::warn!(
            "worker {worker_id} no longer lists {} task(s) it was handed; each counts as a failed attempt",
            lost.len()
        );
        fail_unlisted(shared, st, worker_id, &lost);
    }
    Some(rxon::HeartbeatResponse {
        status: "ok".into(),
        cancel_task_ids: (!cancel.is_empty()).then_some(cancel),
        ..Default::default()
    })
}

/// Tasks an alive worker no longer lists (it could not read them, or their
/// result was lost): each is a failed attempt (`TRANSIENT_ERROR`), retried
/// by its retry policy, so a task no worker can run ends its job.
fn fail_unlisted(
    shared: &Shared,
    st: &mut EngineState,
    worker_id: &str,
    lost: &BTreeMap<String, Held>,
) {
    for h in lost.values() {
        st.drop_lease(h);
    }
    let job_ids: BTreeSet<Uuid> = lost.values().map(|h| h.job).collect();
    for id in job_ids {
        let Some(mut job) = take(st, id) else {
            continue;
        };
        let mut events = Vec::new();
        for idx in 0..job.tasks.len() {
            if job.status.is_terminal()
                || !lost.contains_key(&job.tasks[idx].task_id)
                || job.tasks[idx].result.is_some()
            {
                continue;
            }
            let message = format!(
                "worker {worker_id} no longer lists task {} (it could not read it, or its result was lost)",
                job.tasks[idx].task_id
            );
            task_failed(
                shared,
                st,
                &mut job,
                idx,
                rxon::error_code::TRANSIENT,
                &message,
                &mut events,
            );
        }
        if !events.is_empty() {
            commit(st, &mut job, events, None);
        }
        put(st, job);
    }
}

/// A worker's event about a job it runs. `progress` updates the job; an
/// event the job's dispatch maps (`events = { <type> = "<state>" }`) from
/// its running task moves the job to that state, with the payload as the
/// state's result (the task is told to stop: its result would be stale);
/// any other event is kept in the job's history. An event about another worker's job, or
/// about a job that has ended, is refused (nothing recorded).
pub(crate) fn worker_event(
    shared: &Shared,
    st: &mut EngineState,
    worker_id: &str,
    ev: &rxon::WorkerEventPayload,
) -> Result<(), crate::engine::EngineError> {
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
    let result = if job.status.is_terminal() {
        Err(crate::engine::EngineError::AlreadyEnded(job.status))
    } else if !assigned {
        Err(crate::engine::EngineError::NotAssigned(format!(
            "Forbidden: Worker '{worker_id}' is not assigned to job '{job_id}'"
        )))
    } else {
        let progress = ev.event_type == rxon::EVENT_PROGRESS;
        // Within its bounds per attempt: progress every PROGRESS_INTERVAL
        // (the worker host sends it once a second), other events
        // MAX_WORKER_EVENTS_PER_TASK; the rest are dropped.
        if let Some(task) = job
            .tasks
            .iter_mut()
            .find(|t| t.worker_id.as_deref() == Some(worker_id) && t.result.is_none())
        {
            if progress {
                let now = Utc::now();
                let interval = chrono::Duration::from_std(PROGRESS_INTERVAL).unwrap_or_default();
                if task.progress_at.is_some_and(|at| now - at < interval) {
                    put(st, job);
                    return Ok(());
                }
                task.progress_at = Some(now);
            } else {
                task.events += 1;
                if task.events > MAX_WORKER_EVENTS_PER_TASK {
                    if task.events == MAX_WORKER_EVENTS_PER_TASK + 1 {
                        tracing::warn!(job_id = %job.id, "job {}: worker {worker_id} sent more than {MAX_WORKER_EVENTS_PER_TASK} events about task {}; further ones are dropped", job.id, task.task_id);
                        commit(st, &mut job, Vec::new(), None);
                    }
                    put(st, job);
                    return Ok(());
                }
            }
        }
        let payload = Value::Object(ev.payload.clone());
        let mut events = Vec::new();
        if progress {
            job.progress = Some(payload.clone());
            events.push(event(EventKind::Progress, payload.to_string()));
        } else {
            job.worker_event = Some((ev.event_type.clone(), ev.payload.clone()));
            if let Some(url) = &job.webhook_url
                && job.options.forwards_event(&ev.event_type)
            {
                let hook = super::super::webhook::Webhook::for_event(
                    url,
                    &job,
                    &ev.event_type,
                    &ev.payload,
                );
                st.webhooks.push(hook);
            }
            let note = format!(
                "event {} from worker {worker_id}: {}",
                ev.event_type,
                rxon::text::json_preview(&payload)
            );
            match event_transition(shared, &job, worker_id, ev) {
                None => events.push(event(EventKind::WorkerEvent, note)),
                Some((idx, to)) => {
                    let task = &job.tasks[idx];
                    tracing::info!(job_id = %job.id, "job {}: event {} from task {} moves it to {to}", job.id, rxon::text::for_log(&ev.event_type), task.task_id);
                    let outcome = format!("event:{}", ev.event_type);
                    let task_ref = crate::job::TaskRef::of(task, Some(&outcome));
                    events.push(task_event(EventKind::WorkerEvent, note, task_ref));
                    // The task's result would be stale: the worker is told
                    // to stop it (at once over its channel, else at its next
                    // heartbeat).
                    let task_id = job.tasks[idx].task_id.clone();
                    release(st, worker_id, &task_id);
                    st.stops.push(TaskStop {
                        worker_id: worker_id.to_string(),
                        task_id,
                        job_id: job.id,
                    });
                    std::sync::Arc::make_mut(&mut job.results)
                        .insert(job.current_state.clone(), payload);
                    job.result = Some(ev.payload.clone().into());
                    let outcome = format!("event {}", ev.event_type);
                    enter_state(&mut job, &to, Some(&outcome), &mut events);
                    advance(shared, st, &mut job, &mut events);
                }
            }
        }
        commit(st, &mut job, events, None);
        job.worker_event = None;
        Ok(())
    };
    put(st, job);
    result
}

/// Least time between two progress reports of one task attempt that are
/// kept (each is a job write and a history entry); closer ones are dropped.
pub const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Worker events (other than progress) kept per task attempt; more are
/// dropped, as the worker host's own bound on its plugins.
pub const MAX_WORKER_EVENTS_PER_TASK: u32 = 100;

/// The task an event moves the job on from, and the state it moves to:
/// the job's one dispatched task, run by `worker_id`, named by the event
/// (`target_task_id`, else `origin_task_id`, when given), in a dispatch
/// state that maps the event's type.
fn event_transition(
    shared: &Shared,
    job: &Job,
    worker_id: &str,
    ev: &rxon::WorkerEventPayload,
) -> Option<(usize, String)> {
    let bp = shared.blueprint_of(job)?;
    let Action::Dispatch { events, .. } = &bp.state(&job.current_state)?.action else {
        return None;
    };
    let to = events.get(&ev.event_type)?;
    let named = ev
        .target_task_id
        .as_deref()
        .or(ev.origin_task_id.as_deref());
    let idx = job.tasks.iter().position(|t| {
        t.worker_id.as_deref() == Some(worker_id)
            && t.result.is_none()
            && named.is_none_or(|n| n == t.task_id)
    })?;
    Some((idx, to.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(status: &str, worker: Option<&str>) -> Job {
        let mut job: Job = serde_json::from_value(serde_json::json!({
            "id": uuid::Uuid::new_v4(), "blueprint": "b", "owner": "o", "status": status,
            "current_state": "start", "initial_data": {}, "results": {}, "state_history": [],
            "transitions": 0, "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z", "version": 1,
            "tasks": [{"task_id": "t1", "task_type": "echo_task", "params": {}, "attempt": 1,
                       "queued_at": "2026-01-01T00:00:00Z"}]
        }))
        .expect("a job");
        job.tasks[0].worker_id = worker.map(str::to_string);
        job
    }

    #[test]
    fn only_a_job_with_an_untaken_task_needs_the_worker_list() {
        let empty = EngineState::default();
        let queued = job("waiting_for_worker", None);
        assert!(waits_for_worker(&queued));
        assert_eq!(
            waiting_reason(&empty, &queued).as_deref(),
            Some("no registered worker offers task type echo_task")
        );
        let taken = job("waiting_for_worker", Some("w1"));
        assert!(!waits_for_worker(&taken));
        assert_eq!(
            waiting_reason(&empty, &taken).as_deref(),
            Some("worker w1 is running task t1 (echo_task)")
        );
        for status in ["finished", "failed", "cancelled", "running"] {
            let other = job(status, None);
            assert!(!waits_for_worker(&other), "{status}");
            assert_eq!(waiting_reason(&empty, &other), None, "{status}");
        }
    }
}
