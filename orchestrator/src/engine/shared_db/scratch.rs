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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use tokio::time::Instant;
use uuid::Uuid;

use super::super::effects::AfterCommit;
use super::super::workers::{Held, WorkerRecord};
use super::super::{EngineState, Timer};
use super::DbError;
use crate::job::Job;

/// A registration as stored (`workers.record`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct StoredWorker {
    pub worker_id: String,
    pub worker_type: String,
    pub skills: Vec<rxon::SkillInfo>,
    pub status: String,
    pub capabilities: Option<serde_json::Value>,
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
            registered_at: self.registered_at,
            last_heartbeat_at: self.last_heartbeat_at,
            last_seen,
            ttl: Duration::from_millis(self.ttl_ms),
            instance_id: self.instance_id,
            channel_lost: false,
            in_flight: BTreeMap::new(),
            wake: Arc::new(tokio::sync::Notify::new()),
            plugins: self.plugins,
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
        Timer::WorkerSweep => None,
    }
}

pub(super) fn timer_of(kind: &str, job: Uuid, task_id: String) -> Option<Timer> {
    match kind {
        "dispatch_timeout" => Some(Timer::DispatchTimeout { job, task_id }),
        "result_timeout" => Some(Timer::ResultTimeout { job, task_id }),
        "retry" => Some(Timer::Retry { job, task_id }),
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
    now: DateTime<Utc>,
    mono: Instant,
}

impl Scratch {
    /// Locks and loads `jobs` (ids), and loads `workers` with all their
    /// leases. `fired`: a timer being fired now (already locked by the caller),
    /// left out of the scratch state so it is dropped.
    pub async fn load(
        tx: &Transaction<'_>,
        jobs: &[Uuid],
        workers: &[String],
        fired: Option<i64>,
        keep_finished: usize,
        now: DateTime<Utc>,
    ) -> Result<Self, DbError> {
        let mono = Instant::now();
        let mut st = EngineState {
            keep_finished: keep_finished.max(jobs.len() + 1),
            partial_workers: true,
            ..EngineState::default()
        };
        let mut ids: Vec<Uuid> = jobs.to_vec();
        ids.sort();
        ids.dedup();
        if ids.is_empty() && workers.is_empty() {
            // Nothing to lock or read (a job being created): every query
            // below would find nothing, at four round trips.
            st.seq = 1;
            return Ok(Self {
                st,
                versions: HashMap::new(),
                workers: HashMap::new(),
                leases: BTreeSet::new(),
                timers: HashMap::new(),
                now,
                mono,
            });
        }
        let mut versions = HashMap::new();
        let locked = match ids.is_empty() {
            true => Vec::new(),
            false => {
                tx.query(
                    &tx.prepare_cached(
                        "SELECT id, body FROM jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                    )
                    .await?,
                    &[&ids],
                )
                .await?
            }
        };
        for row in locked {
            let (id, body): (Uuid, &str) = (row.get(0), row.get(1));
            let job: Job = serde_json::from_str(body)
                .map_err(|e| DbError::UnreadableJob(id, e.to_string()))?;
            versions.insert(job.id, job.version);
            st.jobs.insert(job.id, Box::new(job));
        }
        let loaded: Vec<Uuid> = st.jobs.keys().copied().collect();
        // The rest in one statement, after the lock (a statement of its
        // own: its snapshot is taken once the jobs are ours): the jobs'
        // timers, the leases of those jobs and of the workers named, and
        // the workers holding any of them.
        let rows = tx
            .query(
                &tx.prepare_cached(
                    "WITH l AS MATERIALIZED (
                         SELECT task_id, job_id, worker_id, since FROM task_leases
                         WHERE job_id = ANY($1) OR worker_id = ANY($2))
                     SELECT 0::int2, id, kind, task_id, due_at, job_id, NULL::jsonb
                       FROM timers WHERE job_id = ANY($1)
                     UNION ALL
                     SELECT 1::int2, NULL::bigint, task_id, worker_id, since, job_id, NULL::jsonb FROM l
                     UNION ALL
                     SELECT 2::int2, NULL::bigint, id, NULL::text, last_seen, NULL::uuid, record
                       FROM workers WHERE id = ANY($2) OR id IN (SELECT worker_id FROM l)",
                )
                .await?,
                &[&loaded, &workers],
            )
            .await?;
        let mut timers = HashMap::new();
        let mut max_id = 0i64;
        let mut lease_rows: Vec<(String, Uuid, String, DateTime<Utc>)> = Vec::new();
        let mut stored_workers = HashMap::new();
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
                    timers.insert(key, id);
                }
                1 => lease_rows.push((row.get(2), row.get(5), row.get(3), row.get(4))),
                _ => {
                    let record: serde_json::Value = row.get(6);
                    let Ok(stored) = serde_json::from_value::<StoredWorker>(record) else {
                        continue;
                    };
                    let last_seen = instant_of(row.get(4), now, mono);
                    stored_workers.insert(stored.worker_id.clone(), stored.clone());
                    st.workers
                        .insert(stored.worker_id.clone(), stored.record(last_seen));
                }
            }
        }
        // New timers get keys above every stored one.
        st.seq = max_id.max(0) as u64 + 1;
        let mut leases = BTreeSet::new();
        for (task_id, job, worker, since) in lease_rows {
            let lease = st
                .timers
                .iter()
                .find(|(_, t)| matches!(t, Timer::ResultTimeout { job: j, task_id: id } if *j == job && *id == task_id))
                .map(|(k, _)| *k);
            if let Some(w) = st.workers.get_mut(&worker) {
                w.in_flight.insert(
                    task_id.clone(),
                    Held {
                        job,
                        since: instant_of(since, now, mono),
                        lease,
                    },
                );
                leases.insert((task_id, worker));
            }
        }
        Ok(Self {
            st,
            versions,
            workers: stored_workers,
            leases,
            timers,
            now,
            mono,
        })
    }

    /// Writes what the event changed. Fails with [`DbError::Conflict`] when
    /// a job changed under us (then the caller retries the whole event).
    pub async fn apply(mut self, tx: &Transaction<'_>) -> Result<(AfterCommit, Vec<Job>), DbError> {
        let mut after = AfterCommit {
            stops: std::mem::take(&mut self.st.stops),
            ..AfterCommit::default()
        };
        // Jobs: the last snapshot of each, its history, its webhook.
        let mut last: BTreeMap<Uuid, Job> = BTreeMap::new();
        let mut events: Vec<(Uuid, crate::job::JobEvent)> = Vec::new();
        for msg in std::mem::take(&mut self.st.outbox) {
            let Some(write) = msg.write else { continue };
            crate::metrics::observations(&write, &mut after.observed);
            let id = write.job.id;
            events.extend(write.events.into_iter().map(|e| (id, e)));
            if let Some(hook) = write.webhook {
                tx.execute(
                    &tx.prepare_cached("INSERT INTO webhooks (job_id, url, body, created_at) VALUES ($1, $2, $3, now())
                     ON CONFLICT (job_id) DO UPDATE SET url = excluded.url, body = excluded.body").await?,
                    &[&hook.job_id, &hook.url, &hook.body],
                )
                .await?;
            }
            last.insert(id, write.job);
        }
        for (id, job) in &last {
            after.updates.push(super::super::JobUpdate::of(job));
            let body = serde_json::to_string(job).map_err(|e| DbError::Corrupt(e.to_string()))?;
            let status = job.status.as_str();
            after.ended |= job.status.is_terminal();
            match self.versions.get(id) {
                Some(expected) => {
                    let n = tx
                        .execute(
                            &tx.prepare_cached("UPDATE jobs SET status = $2, updated_at = $3, version = $4, body = $5
                             WHERE id = $1 AND version = $6").await?,
                            &[
                                id,
                                &status,
                                &job.updated_at,
                                &(job.version as i64),
                                &body,
                                &(*expected as i64),
                            ],
                        )
                        .await?;
                    if n != 1 {
                        return Err(DbError::Conflict(format!("job {id} changed meanwhile")));
                    }
                }
                None => {
                    tx.execute(
                        &tx.prepare_cached("INSERT INTO jobs (id, blueprint, owner, status, created_at, updated_at, version, body)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)").await?,
                        &[
                            id,
                            &job.blueprint,
                            &job.owner,
                            &status,
                            &job.created_at,
                            &job.updated_at,
                            &(job.version as i64),
                            &body,
                        ],
                    )
                    .await?;
                }
            }
        }
        // One statement for the event's history entries, in their order
        // (each statement is a round trip and a step of the server's).
        if !events.is_empty() {
            let ids: Vec<Uuid> = events.iter().map(|(id, _)| *id).collect();
            let ats: Vec<_> = events.iter().map(|(_, e)| e.at).collect();
            let kinds: Vec<&str> = events.iter().map(|(_, e)| e.event.as_str()).collect();
            let messages: Vec<&str> = events.iter().map(|(_, e)| e.message.as_str()).collect();
            let tasks: Vec<Option<String>> = events
                .iter()
                .map(|(_, e)| crate::job::JobEvent::task_json(e))
                .collect();
            tx.execute(
                &tx.prepare_cached(
                    "INSERT INTO job_events (job_id, at, event, message, task)
                     SELECT job_id, at, event, message, task
                     FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[])
                          WITH ORDINALITY AS e(job_id, at, event, message, task, n)
                     ORDER BY n",
                )
                .await?,
                &[&ids, &ats, &kinds, &messages, &tasks],
            )
            .await?;
        }
        // Queue entries added (the scratch queues started empty but for a
        // claimed entry, which the event popped).
        for queued in self.st.queues.values().flatten() {
            let task_type = self
                .st
                .jobs
                .get(&queued.job)
                .and_then(|j| j.tasks.iter().find(|t| t.task_id == queued.task_id))
                .map(|t| t.task_type.clone())
                .unwrap_or_default();
            tx.execute(
                &tx.prepare_cached(
                    "INSERT INTO task_queue (job_id, task_id, task_type) VALUES ($1, $2, $3)",
                )
                .await?,
                &[&queued.job, &queued.task_id, &task_type],
            )
            .await?;
            after.queued = true;
        }
        // Timers added and dropped.
        for (key, timer) in &self.st.timers {
            if self.timers.contains_key(key) {
                continue;
            }
            if let Some((job, kind, task_id)) = timer_row(timer) {
                let due = utc_of(key.0, self.now, self.mono);
                tx.execute(
                    &tx.prepare_cached("INSERT INTO timers (due_at, job_id, kind, task_id) VALUES ($1, $2, $3, $4)").await?,
                    &[&due, &job, &kind, &task_id],
                )
                .await?;
            }
        }
        let dropped: Vec<i64> = self
            .timers
            .iter()
            .filter(|(key, _)| !self.st.timers.contains_key(key))
            .map(|(_, id)| *id)
            .collect();
        if !dropped.is_empty() {
            tx.execute(
                &tx.prepare_cached("DELETE FROM timers WHERE id = ANY($1)")
                    .await?,
                &[&dropped],
            )
            .await?;
        }
        // Leases taken and released; registrations changed or dropped.
        let mut now_leased = BTreeSet::new();
        for w in self.st.workers.values() {
            for (task_id, held) in &w.in_flight {
                now_leased.insert((task_id.clone(), w.worker_id.clone()));
                if !self
                    .leases
                    .contains(&(task_id.clone(), w.worker_id.clone()))
                {
                    let since = utc_of(held.since, self.now, self.mono);
                    tx.execute(
                        &tx.prepare_cached("INSERT INTO task_leases (task_id, job_id, worker_id, since) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (task_id) DO UPDATE SET job_id = excluded.job_id,
                             worker_id = excluded.worker_id, since = excluded.since").await?,
                        &[task_id, &held.job, &w.worker_id, &since],
                    )
                    .await?;
                }
            }
        }
        for (task_id, worker) in &self.leases {
            if !now_leased.contains(&(task_id.clone(), worker.clone())) {
                tx.execute(
                    &tx.prepare_cached(
                        "DELETE FROM task_leases WHERE task_id = $1 AND worker_id = $2",
                    )
                    .await?,
                    &[task_id, worker],
                )
                .await?;
            }
        }
        for (id, w) in &self.st.workers {
            let stored = StoredWorker::of(w);
            let last_seen = utc_of(w.last_seen, self.now, self.mono);
            // Liveness alone (`last_seen`) is touched outside events, so
            // that events of one worker do not queue on its row.
            if self.workers.get(id) != Some(&stored) {
                let record =
                    serde_json::to_value(&stored).map_err(|e| DbError::Corrupt(e.to_string()))?;
                tx.execute(
                    &tx.prepare_cached("INSERT INTO workers (id, record, last_seen, ttl_ms) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (id) DO UPDATE SET record = excluded.record,
                         last_seen = GREATEST(workers.last_seen, excluded.last_seen), ttl_ms = excluded.ttl_ms").await?,
                    &[id, &record, &last_seen, &(stored.ttl_ms as i64)],
                )
                .await?;
            }
        }
        for id in self.workers.keys() {
            if !self.st.workers.contains_key(id) {
                tx.execute(
                    &tx.prepare_cached("DELETE FROM workers WHERE id = $1")
                        .await?,
                    &[id],
                )
                .await?;
            }
        }
        after.webhooks = std::mem::take(&mut self.st.webhooks);
        Ok((after, last.into_values().collect()))
    }
}
