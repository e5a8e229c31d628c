//! `map` states: one task per element of a list computed at run time, at
//! most `max_in_flight` queued or running at once, results gathered in
//! input order.
//!
//! The job carries the run ([`MapRun`]): the list as `over` gave it, the
//! next element to dispatch, each element's result and the failures. Its
//! `tasks` hold only the elements in flight, each with its `index`.

use super::*;
use crate::blueprint::MapSpec;
use crate::job::{MapFailure, MapRun};

/// Enters a `map` state: evaluates the list and dispatches the first
/// elements (an empty list goes straight on).
pub(crate) fn start_map(
    shared: &Shared,
    st: &mut EngineState,
    job: &mut Job,
    spec: &MapSpec,
    events: &mut Vec<JobEvent>,
) -> Flow {
    if let Some(why) = forbidden(job, &spec.task.task_type) {
        let code = own_code::POLICY_VIOLATION;
        end_failed(st, job, JobStatus::Failed, code, &why, events);
        return Flow::Stop;
    }
    let items = match spec.over.eval(&job.expr_context(&shared.settings.clients)) {
        Ok(Value::Array(items)) => items,
        Ok(other) => {
            let msg = format!(
                "state {}: map.over `{}` must give a list, got {}",
                job.current_state,
                spec.over.source(),
                rxon::text::json_preview(&other)
            );
            blueprint_error(st, job, &msg, events);
            return Flow::Stop;
        }
        Err(e) => {
            let msg = format!("state {}: {e}", job.current_state);
            blueprint_error(st, job, &msg, events);
            return Flow::Stop;
        }
    };
    let max = shared.settings.max_map_items;
    if items.len() > max {
        let msg = format!(
            "state {}: map.over gave {} elements; a map takes at most {max} (max_map_items)",
            job.current_state,
            items.len()
        );
        end_failed(
            st,
            job,
            JobStatus::Failed,
            own_code::MAP_LIMIT,
            &msg,
            events,
        );
        return Flow::Stop;
    }
    let n = items.len();
    job.map = Some(Box::new(MapRun {
        results: vec![Value::Null; n],
        items,
        ..MapRun::default()
    }));
    events.push(event(
        EventKind::MapStarted,
        format!(
            "map over {n} element(s) of {}, at most {} at a time",
            spec.task.task_type, spec.max_in_flight
        ),
    ));
    if n == 0 {
        return finish(job, spec, events);
    }
    job.status = JobStatus::WaitingForParallelTasks;
    fill(shared, st, job, spec, events)
}

/// What the caller does next: go on advancing the job (it entered another
/// state), or stop (it waits, or ended).
pub(crate) enum Flow {
    Advance,
    Stop,
}

/// Dispatches elements until `max_in_flight` are out or none is left.
fn fill(
    shared: &Shared,
    st: &mut EngineState,
    job: &mut Job,
    spec: &MapSpec,
    events: &mut Vec<JobEvent>,
) -> Flow {
    let ctx = job.expr_context(&shared.settings.clients);
    loop {
        let Some(run) = job.map.as_deref_mut() else {
            return Flow::Stop;
        };
        if job.tasks.len() >= spec.max_in_flight as usize || run.next as usize >= run.items.len() {
            return Flow::Stop;
        }
        let index = run.next;
        run.next += 1;
        let item_ctx = crate::blueprint::expr::with_item(&ctx, &run.items[index as usize], index);
        let mut record = match spec_record(&spec.task, &item_ctx, job, None) {
            Ok(record) => record,
            Err(e) => {
                let msg = format!("state {} element {index}: {e}", job.current_state);
                blueprint_error(st, job, &msg, events);
                return Flow::Stop;
            }
        };
        record.index = Some(index);
        job.tasks.push(record);
        let idx = job.tasks.len() - 1;
        let timeout = task_timeout(spec.task.dispatch_timeout, job.dispatch_timeout);
        enqueue(st, job, idx, timeout, events);
    }
}

/// Element task `idx` succeeded with `data`.
pub(crate) fn item_succeeded(
    shared: &Shared,
    st: &mut EngineState,
    job: &mut Job,
    spec: &MapSpec,
    idx: usize,
    data: Object,
    events: &mut Vec<JobEvent>,
) -> Flow {
    let task = job.tasks.remove(idx);
    let Some(run) = job.map.as_deref_mut() else {
        return Flow::Stop;
    };
    let index = task.index.unwrap_or_default() as usize;
    let value = Value::Object(data);
    run.result_bytes += serde_json::to_vec(&value).map_or(0, |b| b.len() as u64);
    let max = shared.settings.max_map_result_bytes;
    if run.result_bytes > max {
        let msg = format!(
            "state {}: the results of the map's elements exceed {max} bytes (max_map_result_bytes)",
            job.current_state
        );
        end_failed(
            st,
            job,
            JobStatus::Failed,
            own_code::MAP_LIMIT,
            &msg,
            events,
        );
        return Flow::Stop;
    }
    if let Some(slot) = run.results.get_mut(index) {
        *slot = value;
    }
    run.done += 1;
    step(shared, st, job, spec, events)
}

/// Element task `idx` failed for good (`why`: its code and message);
/// under `continue` the map goes on (under `fail_fast` the caller takes the
/// failure path instead).
pub(crate) fn item_failed(
    shared: &Shared,
    st: &mut EngineState,
    job: &mut Job,
    spec: &MapSpec,
    idx: usize,
    (code, message): (&str, &str),
    events: &mut Vec<JobEvent>,
) -> Flow {
    let task = job.tasks.remove(idx);
    let Some(run) = job.map.as_deref_mut() else {
        return Flow::Stop;
    };
    let index = task.index.unwrap_or_default();
    run.failures.push(MapFailure {
        index,
        code: code.to_string(),
        message: rxon::text::clip(message, crate::engine::MAX_EVENT_TEXT).into_owned(),
    });
    run.done += 1;
    step(shared, st, job, spec, events)
}

/// After an element is done: more out, or the end of the map.
fn step(
    shared: &Shared,
    st: &mut EngineState,
    job: &mut Job,
    spec: &MapSpec,
    events: &mut Vec<JobEvent>,
) -> Flow {
    let Some(run) = job.map.as_deref() else {
        return Flow::Stop;
    };
    if run.done as usize == run.items.len() {
        return finish(job, spec, events);
    }
    fill(shared, st, job, spec, events)
}

/// Every element is done: `results.<state>` = `{items, failures}`, on to `next`.
fn finish(job: &mut Job, spec: &MapSpec, events: &mut Vec<JobEvent>) -> Flow {
    let Some(run) = job.map.take() else {
        return Flow::Stop;
    };
    let failed = run.failures.len();
    let mut gathered = Object::new();
    gathered.insert("items".into(), Value::Array(run.results));
    gathered.insert(
        "failures".into(),
        serde_json::to_value(&run.failures).unwrap_or_default(),
    );
    std::sync::Arc::make_mut(&mut job.results)
        .insert(job.current_state.clone(), Value::Object(gathered.clone()));
    job.result = Some(gathered.into());
    let outcome = if failed == 0 {
        "success".to_string()
    } else {
        format!("{failed} element(s) failed")
    };
    enter_state(job, &spec.next, Some(&outcome), events);
    Flow::Advance
}
