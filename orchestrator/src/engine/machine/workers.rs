//! Workers and clients acting on jobs: registration, heartbeats, events,
//! cancel, and why a job waits.

use super::*;

pub(crate) fn cancel(st: &mut EngineState, id: Uuid, owner: &str) -> Result<(), CancelError> {
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

pub(crate) fn register_worker(st: &mut EngineState, reg: &rxon::WorkerRegistration) {
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

pub(crate) fn heartbeat(
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

pub(crate) fn worker_event(
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
