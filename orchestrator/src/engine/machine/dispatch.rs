//! Queues: putting tasks in, handing them to polling workers.

use super::*;
use crate::engine::strategy::{STRATEGY_HOLD, Standing};

/// Puts task `idx` of `job` in the queue of its type and wakes workers that serve it.
pub(crate) fn enqueue(
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
    let queued = Queued {
        job: job.id,
        task_id: task.task_id.clone(),
        seq,
        rank: super::super::state::rank(task.queued_at, task.priority),
        constrained: task.constrained(),
    };
    st.queues
        .entry(task.task_type.clone())
        .or_default()
        .insert(queued.key(), queued);
    let (task_id, task_type, attempt) =
        (task.task_id.clone(), task.task_type.clone(), task.attempt);
    let queued = crate::job::TaskRef::of(task, None);
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
    if st.partial_workers {
        tracing::debug!(job_id = %job.id, "job {}: task {task_id} ({task_type}){attempt_note} queued", job.id);
    } else if offered == 0 {
        tracing::warn!(
            job_id = %job.id,
            "job {}: task {task_id} ({task_type}){attempt_note} is waiting: no registered worker offers task type {task_type}",
            job.id
        );
    } else {
        tracing::info!(job_id = %job.id, "job {}: task {task_id} ({task_type}){attempt_note} queued for {offered} worker(s)", job.id);
    }
    events.push(task_event(
        EventKind::TaskQueued,
        format!("task {task_id} ({task_type}){attempt_note} queued"),
        queued,
    ));
}

/// Gives the oldest queued task this worker can run to it. Sets
/// `st.again_at` when it passed over tasks whose rate key had no room or
/// left them to a worker their strategy prefers, and `st.standing` when
/// it found nothing.
pub(crate) fn take_task(
    shared: &Shared,
    st: &mut EngineState,
    worker_id: &str,
) -> Option<rxon::TaskPayload> {
    st.again_at = None;
    st.standing = None;
    let worker = st.workers.get(worker_id)?;
    // A worker that said goodbye gets nothing more (its poll raced the goodbye).
    if worker.status == "offline" {
        return None;
    }
    let skills: Vec<String> = worker.skills.iter().map(|s| s.name.clone()).collect();
    let mut look = Look {
        keys: None,
        again_at: None,
        pollers: &shared.pollers,
        worker_id,
        me: None,
    };
    let payload = loop {
        // Per skill, the first task this worker may take; then the first
        // of those.
        let mut best: Option<((i64, u64), &str)> = None;
        for skill in &skills {
            let Some(key) = st
                .queues
                .get(skill)
                .and_then(|q| first_for(st, q, worker_id, &mut look))
            else {
                continue;
            };
            if best.is_none_or(|(b, _)| key < b) {
                best = Some((key, skill));
            }
        }
        let Some((key, skill)) = best else {
            break None;
        };
        let skill = skill.to_string();
        let queued = st.queues.get_mut(&skill)?.remove(&key)?;
        if let Some(payload) = hand_out(shared, st, worker_id, &queued) {
            spend_rate(st, &queued);
            break Some(payload);
        }
    };
    st.again_at = look.again_at;
    // What a waiting worker is ranked by, when some blueprint ranks them.
    if payload.is_none() && shared.catalog.uses_strategies() {
        st.standing = match look.me {
            Some(me) => Some(me),
            None => st
                .workers
                .get(worker_id)
                .map(|w| Standing::of(w, shared.pollers.hot_of(worker_id))),
        };
    }
    payload
}

/// What one take learnt while it looked through the queues.
struct Look<'a> {
    /// Tasks in flight per concurrency key, counted at the first task
    /// with a key the take looks at.
    keys: Option<HashMap<String, u32>>,
    /// When the first task passed over for its rate key or left to
    /// another worker may be this one's.
    again_at: Option<Instant>,
    pollers: &'a crate::engine::strategy::Pollers,
    worker_id: &'a str,
    /// The taker as the strategies rank it, at the first task with one.
    me: Option<Standing>,
}

impl Look<'_> {
    fn again_at(&mut self, at: Instant) {
        self.again_at = Some(self.again_at.map_or(at, |w| w.min(at)));
    }
}

/// A task with a rate key went: its bucket moves on.
fn spend_rate(st: &mut EngineState, queued: &Queued) {
    let Some(rate) = st
        .task(queued.job, &queued.task_id)
        .and_then(|t| t.rate.clone())
    else {
        return;
    };
    let now = Instant::now();
    if st.rates.len() >= crate::engine::rates::KEPT_BUCKETS {
        st.rates.retain(|_, tat| *tat > now);
    }
    let tat = crate::engine::rates::after_one(st.rates.get(&rate.key).copied(), &rate, now);
    st.rates.insert(rate.key, tat);
}

/// When a take that passed over a task whose key its state did not count
/// looks again (the task was queued in the same batch as the take).
const UNCOUNTED_AGAIN: std::time::Duration = std::time::Duration::from_millis(20);

/// Most queued tasks one take looks at in one queue for one its worker
/// may take (tasks that require nothing end the look at once): a queue
/// whose head is many tasks no worker here can run costs a bounded look,
/// and those behind them wait for a take that finds them.
pub const MATCH_SCAN: usize = 256;

/// The key of the first task in `queue` worker `worker_id` may take.
fn first_for(
    st: &EngineState,
    queue: &crate::engine::state::TaskQueue,
    worker_id: &str,
    look: &mut Look<'_>,
) -> Option<(i64, u64)> {
    let worker = st.workers.get(worker_id)?;
    queue
        .iter()
        .take(MATCH_SCAN)
        .find(|(_, q)| !q.constrained || may_take(st, q, worker, look))
        .map(|(key, _)| *key)
}

/// Whether `worker` may take queued task `q`: it meets what the task
/// requires, the task's concurrency key and rate key have room, and its
/// strategy prefers no other worker waiting (a task whose job moved on
/// counts as takeable: the take drops it).
fn may_take(st: &EngineState, q: &Queued, worker: &WorkerRecord, look: &mut Look<'_>) -> bool {
    let Some(task) = st.task(q.job, &q.task_id) else {
        return true;
    };
    if let Some(r) = &task.requires
        && r.unmet(worker, &task.task_type).is_some()
    {
        return false;
    }
    // On a shared database, a key this state did not count is not known.
    let uncounted = |key: &str, rate: bool| {
        st.counted_keys
            .as_ref()
            .is_some_and(|c| !if rate { &c.rate } else { &c.concurrency }.contains(key))
    };
    if task
        .concurrency
        .as_ref()
        .is_some_and(|k| uncounted(&k.key, false))
        || task.rate.as_ref().is_some_and(|r| uncounted(&r.key, true))
    {
        look.again_at(Instant::now() + UNCOUNTED_AGAIN);
        return false;
    }
    if let Some(k) = &task.concurrency {
        let counts = look.keys.get_or_insert_with(|| keys_in_flight(st));
        if counts.get(&k.key).copied().unwrap_or(0) >= k.max {
            return false;
        }
    }
    if let Some(r) = &task.rate
        && let Some(at) =
            crate::engine::rates::ready_at(st.rates.get(&r.key).copied(), r, Instant::now())
    {
        look.again_at(at);
        return false;
    }
    if let Some(strategy) = task.strategy {
        let held = (Utc::now() - task.queued_at).to_std().unwrap_or_default();
        if let Some(left) = STRATEGY_HOLD.checked_sub(held) {
            let me = look
                .me
                .get_or_insert_with(|| Standing::of(worker, look.pollers.hot_of(look.worker_id)));
            if look.pollers.leave_to_better(
                strategy,
                &task.task_type,
                task.requires.as_deref(),
                look.worker_id,
                me,
            ) {
                look.again_at(Instant::now() + left);
                return false;
            }
        }
    }
    true
}

/// Tasks in flight per concurrency key: on a shared database, as counted
/// when the state was loaded plus those handed out since; on one
/// instance, those its workers hold.
pub(crate) fn keys_in_flight(st: &EngineState) -> HashMap<String, u32> {
    if st.partial_workers {
        let mut counts = st.keys_elsewhere.clone();
        for (k, n) in &st.keys_taken {
            *counts.entry(k.clone()).or_default() += n;
        }
        return counts;
    }
    let mut counts = HashMap::new();
    for w in st.workers.values() {
        for (task_id, held) in &w.in_flight {
            if let Some(k) = st
                .task(held.job, task_id)
                .and_then(|t| t.concurrency.as_ref())
            {
                *counts.entry(k.key.clone()).or_default() += 1;
            }
        }
    }
    counts
}

pub(crate) fn hand_out(
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
    // Params the taking worker's skill cannot accept fail here, without a
    // round trip to it (the failure path, as for a worker's own
    // INVALID_INPUT_ERROR).
    let task_type = &job.tasks[idx].task_type;
    let schema = st
        .workers
        .get(worker_id)
        .and_then(|w| w.skills.iter().find(|s| &s.name == task_type))
        .and_then(|s| s.input_schema.as_ref());
    if let Some(why) =
        schema.and_then(|schema| shared.skill_schemas.check(schema, &job.tasks[idx].params))
    {
        let msg = format!(
            "the params of task {} do not match the input schema worker {worker_id} declares for {task_type}: {why}",
            job.tasks[idx].task_id
        );
        let mut events = Vec::new();
        task_failed(
            shared,
            st,
            &mut job,
            idx,
            error_code::INVALID_INPUT,
            &msg,
            &mut events,
        );
        commit(st, &mut job, events, None);
        put(st, job);
        return None;
    }
    let now = Utc::now();
    let spec_timeout = shared
        .blueprint_of(&job)
        .as_ref()
        .and_then(|bp| spec_of(bp, &job.current_state, job.tasks[idx].branch.as_deref()))
        .and_then(|spec| spec.result_timeout);
    let result_timeout = task_timeout(spec_timeout, job.result_timeout);
    // Every handed-out task has a lease: its result timeout, else the default.
    let lease = result_timeout.unwrap_or(shared.settings.default_result_timeout);
    let task = &mut job.tasks[idx];
    task.worker_id = Some(worker_id.to_string());
    task.picked_up_at = Some(now);
    job.task_worker_id = Some(worker_id.to_string());
    let task = job.tasks[idx].clone();
    if let (Some(k), true) = (&task.concurrency, st.partial_workers) {
        *st.keys_taken.entry(k.key.clone()).or_default() += 1;
    }
    let lease = st.add_timer(
        Instant::now() + lease,
        Timer::ResultTimeout {
            job: job.id,
            task_id: task.task_id.clone(),
        },
    );
    if let Some(w) = st.workers.get_mut(worker_id) {
        w.in_flight.insert(
            task.task_id.clone(),
            Held {
                job: job.id,
                since: Instant::now(),
                lease: Some(lease),
                keyed: task.concurrency.is_some(),
            },
        );
    }
    // The deadline is sent only when the blueprint or the job asked for one.
    let deadline =
        result_timeout.map(|t| Value::from(now.timestamp() + t.as_secs_f64().ceil() as i64));
    tracing::info!(
        job_id = %job.id,
        "job {}: task {} ({}) dispatched to worker {worker_id}",
        job.id, task.task_id, task.task_type
    );
    let events = vec![task_event(
        EventKind::TaskDispatched,
        format!(
            "task {} ({}) taken by worker {worker_id}",
            task.task_id, task.task_type
        ),
        crate::job::TaskRef::of(&task, None),
    )];
    commit(st, &mut job, events, None);
    let payload = rxon::TaskPayload {
        job_id: job.id.to_string(),
        task_id: task.task_id.clone(),
        task_type: task.task_type.clone(),
        params: task.params.clone(),
        tracing_context: Object::new(),
        params_metadata: crate::objects::files_named_by(job.data_metadata.as_deref(), &task.params),
        priority: Some(task.priority),
        deadline,
        step: Some(u64::from(job.transitions) + 1),
        timestamp: Some(now.timestamp()),
        sig: None,
        metadata: job.options.metadata.clone(),
        security: job.options.security.clone(),
        policy: job.options.policy.clone(),
    };
    put(st, job);
    Some(payload)
}
