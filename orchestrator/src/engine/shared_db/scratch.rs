//! One engine event against the database: the rows it touches are locked and
//! loaded into a scratch [`EngineState`], the state machine (the same code
//! as the in-memory engine) decides, and what it changed is written back in
//! the same transaction.
//!
//! Loaded: the jobs named (locked, `FOR UPDATE`, in id order), their timers,
//! the task leases of those jobs and of the workers named, and those
//! workers' registrations. Written back: each changed job as a
//! compare-and-set on its version, its history, owed webhooks, new queue
//! entries, timers added or dropped, leases taken or released, and
//! registrations changed, added or dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio::time::Instant;
use uuid::Uuid;

use super::super::effects::AfterCommit;
use super::super::workers::{Held, WorkerRecord};
use super::super::{EngineState, Shared, Timer};
use super::DbError;
use super::writes::Writes;
use crate::job::Job;

/// A registration as stored (`workers.record`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct StoredWorker {
    pub worker_id: String,
    pub worker_type: String,
    pub skills: Vec<rxon::SkillInfo>,
    pub status: String,
    pub capabilities: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_software: Option<serde_json::Value>,
    pub registered_at: DateTime<Utc>,
    pub last_heartbeat_at: DateTime<Utc>,
    pub ttl_ms: u64,
    pub instance_id: Option<String>,
    #[serde(default)]
    pub plugins: Vec<rxon::deploy::PluginReport>,
}

impl StoredWorker {
    pub fn of(w: &WorkerRecord) -> Self {
        Self {
            worker_id: w.worker_id.clone(),
            worker_type: w.worker_type.clone(),
            skills: w.skills.clone(),
            status: w.status.clone(),
            capabilities: w.capabilities.clone(),
            resources: w.resources.clone(),
            installed_software: w.installed_software.clone(),
            registered_at: w.registered_at,
            last_heartbeat_at: w.last_heartbeat_at,
            ttl_ms: w.ttl.as_millis() as u64,
            instance_id: w.instance_id.clone(),
            plugins: w.plugins.clone(),
        }
    }

    pub fn record(self, last_seen: Instant) -> WorkerRecord {
        WorkerRecord {
            worker_id: self.worker_id,
            worker_type: self.worker_type,
            skills: self.skills,
            status: self.status,
            capabilities: self.capabilities,
            resources: self.resources,
            installed_software: self.installed_software,
            registered_at: self.registered_at,
            last_heartbeat_at: self.last_heartbeat_at,
            last_seen,
            ttl: Duration::from_millis(self.ttl_ms),
            instance_id: self.instance_id,
            channel_lost: false,
            in_flight: BTreeMap::new(),
            wake: Arc::new(tokio::sync::Notify::new()),
            plugins: self.plugins,
            // Not shared: a heartbeat's usage would rewrite the row each time.
            usage: None,
        }
    }
}

/// A wall-clock time as the engine's monotonic clock sees it.
pub(super) fn instant_of(at: DateTime<Utc>, now: DateTime<Utc>, mono: Instant) -> Instant {
    match (at - now).to_std() {
        Ok(ahead) => mono + ahead,
        Err(_) => mono
            .checked_sub((now - at).to_std().unwrap_or_default())
            .unwrap_or(mono),
    }
}

/// The other way round.
pub(super) fn utc_of(at: Instant, now: DateTime<Utc>, mono: Instant) -> DateTime<Utc> {
    if at >= mono {
        now + chrono::Duration::from_std(at - mono).unwrap_or_default()
    } else {
        now - chrono::Duration::from_std(mono - at).unwrap_or_default()
    }
}

fn timer_row(t: &Timer) -> Option<(Uuid, &'static str, &str)> {
    match t {
        Timer::DispatchTimeout { job, task_id } => Some((*job, "dispatch_timeout", task_id)),
        Timer::ResultTimeout { job, task_id } => Some((*job, "result_timeout", task_id)),
        Timer::Retry { job, task_id } => Some((*job, "retry", task_id)),
        Timer::Wake { job, step } => Some((*job, "wake", step)),
        Timer::ChildEnded { job, outcome } => Some((*job, "child_ended", outcome)),
        Timer::CancelChild { job } => Some((*job, "cancel_child", "")),
        Timer::WorkerSweep => None,
    }
}

pub(super) fn timer_of(kind: &str, job: Uuid, task_id: String) -> Option<Timer> {
    match kind {
        "dispatch_timeout" => Some(Timer::DispatchTimeout { job, task_id }),
        "result_timeout" => Some(Timer::ResultTimeout { job, task_id }),
        "retry" => Some(Timer::Retry { job, task_id }),
        "wake" => Some(Timer::Wake { job, step: task_id }),
        "child_ended" => Some(Timer::ChildEnded {
            job,
            outcome: task_id,
        }),
        "cancel_child" => Some(Timer::CancelChild { job }),
        _ => None,
    }
}

/// What was loaded, to tell afterwards what the event changed.
pub(super) struct Scratch {
    pub st: EngineState,
    versions: HashMap<Uuid, u64>,
    workers: HashMap<String, StoredWorker>,
    leases: BTreeSet<(String, String)>,
    timers: HashMap<(Instant, u64), i64>,
    /// Queue rows loaded for takes, by their key in the scratch queues:
    /// the write deletes those the machine took out (handed out or stale),
    /// and `true` marks a head (one locked for a take).
    stored_queue: HashMap<(i64, u64), (Uuid, String, bool)>,
    /// Rate keys' buckets as loaded (those spent are written back).
    rates: HashMap<String, Instant>,
    now: DateTime<Utc>,
    mono: Instant,
}

impl Scratch {
    /// Locks and loads `jobs` (ids), and loads `workers` with all their
    /// leases. `claim_for`: one worker id per task to claim for it (see
    /// `engine_load_batch`, migration 0012): each claimed task is queued in
    /// the scratch state, for the machine to hand out, and its job loaded;
    /// the second value names, once per task claimed, the worker it was
    /// claimed for. `fired`: a timer being fired now (already locked by the
    /// caller), left out of the scratch state so it is dropped.
    pub async fn load(
        tx: &impl GenericClient,
        jobs: &[Uuid],
        workers: &[String],
        claim_for: &[String],
        fired: Option<i64>,
        keep_finished: usize,
        now: DateTime<Utc>,
    ) -> Result<(Self, Vec<String>), DbError> {
        Self::load_with(tx, jobs, workers, claim_for, fired, keep_finished, now).await
    }

    pub fn empty(keep_finished: usize, now: DateTime<Utc>) -> Self {
        Self {
            st: EngineState {
                keep_finished: keep_finished.max(1),
                partial_workers: true,
                // No key counted until a load counts some.
                counted_keys: Some(Default::default()),
                seq: 1,
                ..EngineState::default()
            },
            versions: HashMap::new(),
            workers: HashMap::new(),
            leases: BTreeSet::new(),
            timers: HashMap::new(),
            stored_queue: HashMap::new(),
            rates: HashMap::new(),
            now,
            mono: Instant::now(),
        }
    }

    /// One call of `engine_load_batch` (migration 0012): see there.
    async fn load_with(
        tx: &impl GenericClient,
        jobs: &[Uuid],
        workers: &[String],
        claim_for: &[String],
        fired: Option<i64>,
        keep_finished: usize,
        now: DateTime<Utc>,
    ) -> Result<(Self, Vec<String>), DbError> {
        let mut scratch = Self::empty(keep_finished, now);
        let mut ids: Vec<Uuid> = jobs.to_vec();
        ids.sort();
        ids.dedup();
        if ids.is_empty() && workers.is_empty() && claim_for.is_empty() {
            // Nothing to lock or read (a job being created).
            return Ok((scratch, Vec::new()));
        }
        let claim = (!claim_for.is_empty()).then_some(claim_for);
        let rows = tx
            .query(
                &tx.prepare_cached(
                    "SELECT k, n, a, b, ts, job, rec, r FROM engine_load_batch($1, $2, $3)",
                )
                .await?,
                &[&ids, &workers, &claim],
            )
            .await?;
        let (st, mono) = (&mut scratch.st, scratch.mono);
        let mut claimed = Vec::new();
        let mut claimed_for = Vec::new();
        let mut max_id = 0i64;
        let mut lease_rows: Vec<(String, Uuid, String, DateTime<Utc>)> = Vec::new();
        for row in &rows {
            match row.get::<_, i16>(0) {
                0 => {
                    let id: i64 = row.get(1);
                    max_id = max_id.max(id);
                    if Some(id) == fired {
                        continue;
                    }
                    let Some(timer) = timer_of(row.get::<_, &str>(2), row.get(5), row.get(3))
                    else {
                        continue;
                    };
                    let key = (instant_of(row.get(4), now, mono), id as u64);
                    st.timers.insert(key, timer);
                    scratch.timers.insert(key, id);
                }
                1 => lease_rows.push((row.get(2), row.get(5), row.get(3), row.get(4))),
                2 => {
                    let record: serde_json::Value = row.get(6);
                    let Ok(stored) = serde_json::from_value::<StoredWorker>(record) else {
                        continue;
                    };
                    let last_seen = instant_of(row.get(4), now, mono);
                    scratch
                        .workers
                        .insert(stored.worker_id.clone(), stored.clone());
                    st.workers
                        .insert(stored.worker_id.clone(), stored.record(last_seen));
                }
                3 => {
                    let (id, body): (Uuid, &str) = (row.get(5), row.get(2));
                    let job: Job = serde_json::from_str(body)
                        .map_err(|e| DbError::UnreadableJob(id, e.to_string()))?;
                    scratch.versions.insert(job.id, job.version);
                    st.jobs.insert(job.id, Box::new(job));
                }
                5 => {
                    let n: i64 = row.get(1);
                    st.keys_elsewhere
                        .insert(row.get(2), n.clamp(0, u32::MAX as i64) as u32);
                }
                _ => {
                    let task_type: String = row.get(3);
                    let head = match row.get::<_, Option<serde_json::Value>>(6) {
                        Some(serde_json::Value::String(worker)) => {
                            claimed_for.push(worker);
                            true
                        }
                        _ => false,
                    };
                    claimed.push((
                        head,
                        task_type,
                        super::super::Queued {
                            job: row.get(5),
                            task_id: row.get(2),
                            seq: row.get::<_, i64>(1) as u64,
                            rank: row.get::<_, i64>(7),
                            // Set below, from its job.
                            constrained: false,
                        },
                    ));
                }
            }
        }
        st.keep_finished = st.keep_finished.max(st.jobs.len() + 1);
        // New timers get keys above every stored one.
        st.seq = max_id.max(0) as u64 + 1;
        let mut leases = BTreeSet::new();
        for (task_id, job, worker, since) in lease_rows {
            let lease = st
                .timers
                .iter()
                .find(|(_, t)| matches!(t, Timer::ResultTimeout { job: j, task_id: id } if *j == job && *id == task_id))
                .map(|(k, _)| *k);
            let keyed = st
                .task(job, &task_id)
                .is_some_and(|t| t.concurrency.is_some());
            if let Some(w) = st.workers.get_mut(&worker) {
                w.in_flight.insert(
                    task_id.clone(),
                    Held {
                        job,
                        since: instant_of(since, now, mono),
                        lease,
                        keyed,
                    },
                );
                leases.insert((task_id, worker));
            }
        }
        scratch.leases = leases;
        for (head, task_type, mut queued) in claimed {
            // Queued as it is, for the machine to hand out.
            queued.constrained = scratch
                .st
                .task(queued.job, &queued.task_id)
                .is_some_and(|t| t.constrained());
            scratch
                .stored_queue
                .insert(queued.key(), (queued.job, queued.task_id.clone(), head));
            scratch
                .st
                .queues
                .entry(task_type)
                .or_default()
                .insert(queued.key(), queued);
        }
        scratch.count_keys(tx).await?;
        Ok((scratch, claimed_for))
    }

    /// The buckets of the rate keys of the tasks loaded for takes, each
    /// key locked for the rest of the transaction first (`engine_rate_load`,
    /// migration 0013): two takes of tasks of one key, on any instances,
    /// spend its bucket one after the other. Notes which concurrency and
    /// rate keys the state counted (`engine_load_batch` locked and counted
    /// the concurrency keys of the same tasks).
    async fn count_keys(&mut self, tx: &impl GenericClient) -> Result<(), DbError> {
        let mut counted = super::super::state::CountedKeys::default();
        for (job, task_id, _) in self.stored_queue.values() {
            let Some(task) = self.st.task(*job, task_id) else {
                continue;
            };
            if let Some(k) = &task.concurrency {
                counted.concurrency.insert(k.key.clone());
            }
            if let Some(r) = &task.rate {
                counted.rate.insert(r.key.clone());
            }
        }
        // engine_rate_load locks them in key order itself.
        let keys: Vec<String> = counted.rate.iter().cloned().collect();
        self.st.counted_keys = Some(counted);
        if keys.is_empty() {
            return Ok(());
        }
        let rows = tx
            .query(
                &tx.prepare_cached("SELECT key, us FROM engine_rate_load($1)")
                    .await?,
                &[&keys],
            )
            .await?;
        for row in rows {
            let (key, us): (String, i64) = (row.get(0), row.get(1));
            // Microseconds from the database's now: in the past, the
            // bucket is full (as without a row).
            let Ok(ahead) = u64::try_from(us) else {
                continue;
            };
            let tat = self.mono + Duration::from_micros(ahead);
            self.rates.insert(key.clone(), tat);
            self.st.rates.insert(key, tat);
        }
        Ok(())
    }

    /// Writes what the event changed, in one statement. Fails (with a
    /// serialization failure, which the caller retries) when a job changed
    /// under us.
    pub async fn apply(self, tx: &impl GenericClient, shared: &Shared) -> Result<Applied, DbError> {
        let (writes, applied) = self.writes(shared)?;
        writes.run(tx).await?;
        Ok(applied)
    }

    /// What the event changed: the rows to write, and what follows once
    /// they are committed.
    pub fn writes(mut self, shared: &Shared) -> Result<(Writes, Applied), DbError> {
        let mut after = AfterCommit {
            stops: std::mem::take(&mut self.st.stops),
            ..AfterCommit::default()
        };
        let mut w = Writes::default();
        // Jobs: the last snapshot of each, its history, its webhook.
        let mut last: BTreeMap<Uuid, Job> = BTreeMap::new();
        let mut hooks: BTreeMap<Uuid, crate::storage::PendingWebhook> = BTreeMap::new();
        for msg in std::mem::take(&mut self.st.outbox) {
            let Some(write) = msg.write else { continue };
            after.saw(&write);
            let id = write.job.id;
            for e in write.events {
                w.event_tasks.push(crate::job::JobEvent::task_json(&e));
                w.event_jobs.push(id);
                w.event_ats.push(e.at);
                w.event_kinds.push(e.event);
                w.event_messages.push(e.message);
            }
            if let Some(hook) = write.webhook {
                hooks.insert(hook.job_id, hook);
            }
            last.insert(id, write.job);
        }
        for (id, job) in &last {
            after.changed(job, shared);
            let body = serde_json::to_string(job).map_err(|e| DbError::Corrupt(e.to_string()))?;
            match self.versions.get(id) {
                Some(expected) => {
                    w.upd_ids.push(*id);
                    w.upd_statuses.push(job.status.as_str());
                    w.upd_ats.push(job.updated_at);
                    w.upd_versions.push(job.version as i64);
                    w.upd_bodies.push(body);
                    w.upd_expected.push(*expected as i64);
                }
                None => {
                    w.ins_ids.push(*id);
                    w.ins_blueprints.push(job.blueprint.clone());
                    w.ins_owners.push(job.owner.clone());
                    w.ins_statuses.push(job.status.as_str());
                    w.ins_created.push(job.created_at);
                    w.ins_updated.push(job.updated_at);
                    w.ins_versions.push(job.version as i64);
                    w.ins_bodies.push(body);
                }
            }
        }
        for hook in hooks.into_values() {
            w.hook_jobs.push(hook.job_id);
            w.hook_urls.push(hook.url);
            w.hook_bodies.push(hook.body);
        }
        // Queue entries: those loaded for takes and still there stay as they
        // are (a head left so is worth a look by other takers: its lock
        // kept them off it), the others loaded were taken out and are
        // deleted; the rest were added, in their order.
        let mut kept = HashSet::new();
        for queued in self.st.queues.values().flat_map(|q| q.values()) {
            if let Some((job, task_id, head)) = self.stored_queue.get(&queued.key())
                && *job == queued.job
                && *task_id == queued.task_id
            {
                kept.insert(queued.key());
                after.queued |= *head;
                continue;
            }
            let task = self.st.task(queued.job, &queued.task_id);
            w.queue_jobs.push(queued.job);
            w.queue_tasks.push(queued.task_id.clone());
            w.queue_types
                .push(task.map(|t| t.task_type.clone()).unwrap_or_default());
            w.queue_ranks.push(queued.rank);
            w.queue_constrained.push(queued.constrained);
            w.queue_keys.push(key_of(task));
            after.queued = true;
        }
        w.queue_taken = self
            .stored_queue
            .keys()
            .filter(|key| !kept.contains(key))
            .map(|(_, seq)| *seq as i64)
            .collect();
        // Timers added and dropped.
        let mut first_timer: Option<Instant> = None;
        for (key, timer) in &self.st.timers {
            if self.timers.contains_key(key) {
                continue;
            }
            if let Some((job, kind, task_id)) = timer_row(timer) {
                first_timer = Some(first_timer.map_or(key.0, |t| t.min(key.0)));
                w.timer_due.push(utc_of(key.0, self.now, self.mono));
                w.timer_jobs.push(job);
                w.timer_kinds.push(kind);
                w.timer_tasks.push(task_id.to_string());
            }
        }
        w.timers_dropped = self
            .timers
            .iter()
            .filter(|(key, _)| !self.st.timers.contains_key(key))
            .map(|(_, id)| *id)
            .collect();
        // Leases taken and released; registrations changed or dropped.
        let mut now_leased = BTreeSet::new();
        for wk in self.st.workers.values() {
            for (task_id, held) in &wk.in_flight {
                now_leased.insert((task_id.clone(), wk.worker_id.clone()));
                if !self
                    .leases
                    .contains(&(task_id.clone(), wk.worker_id.clone()))
                {
                    w.lease_tasks.push(task_id.clone());
                    w.lease_jobs.push(held.job);
                    w.lease_workers.push(wk.worker_id.clone());
                    w.lease_since.push(utc_of(held.since, self.now, self.mono));
                    w.lease_keys.push(key_of(self.st.task(held.job, task_id)));
                }
            }
        }
        for (task_id, worker) in &self.leases {
            // A task leased anew is overwritten by its insert, not deleted.
            if !now_leased.contains(&(task_id.clone(), worker.clone()))
                && !w.lease_tasks.contains(task_id)
            {
                w.unlease_tasks.push(task_id.clone());
                w.unlease_workers.push(worker.clone());
            }
        }
        for (id, wk) in &self.st.workers {
            let stored = StoredWorker::of(wk);
            // Liveness alone (`last_seen`) is touched outside events, so
            // that events of one worker do not queue on its row.
            if self.workers.get(id) != Some(&stored) {
                w.worker_ids.push(id.clone());
                w.worker_records.push(
                    serde_json::to_value(&stored).map_err(|e| DbError::Corrupt(e.to_string()))?,
                );
                w.worker_seen
                    .push(utc_of(wk.last_seen, self.now, self.mono));
                w.worker_ttls.push(stored.ttl_ms as i64);
            }
        }
        w.workers_dropped = self
            .workers
            .keys()
            .filter(|id| !self.st.workers.contains_key(*id))
            .cloned()
            .collect();
        // Rate buckets spent, as microseconds from the database's now.
        for (key, tat) in &self.st.rates {
            if self.rates.get(key) != Some(tat) {
                w.rate_keys.push(key.clone());
                w.rate_ahead
                    .push(tat.saturating_duration_since(self.mono).as_micros() as i64);
            }
        }
        after.webhooks = std::mem::take(&mut self.st.webhooks);
        // A task with a concurrency key ended: one of that key waiting may go.
        after.queued |= self.st.keys_freed;
        Ok((
            w,
            Applied {
                after,
                written: last.into_values().collect(),
                first_timer,
            },
        ))
    }
}

/// A task's concurrency key, as `task_queue.ckey` and `task_leases.ckey`
/// store it.
fn key_of(task: Option<&crate::job::TaskRecord>) -> Option<String> {
    task.and_then(|t| t.concurrency.as_ref())
        .map(|k| k.key.clone())
}

/// What an event wrote, for the work after its commit.
pub(super) struct Applied {
    pub after: AfterCommit,
    /// The jobs written (this instance keeps them, [`super::cache`]).
    pub written: Vec<Job>,
    /// When the earliest timer the event added is due.
    pub first_timer: Option<Instant>,
}
