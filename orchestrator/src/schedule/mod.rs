//! Schedules: jobs started at times a schedules file gives (avtomatika's
//! `schedules.toml`, plus cron, time zones, overlap and catch-up policies),
//! or a schedule deployed through the API (`PUT /api/v1/schedules/{name}`:
//! its definition is kept in its row, so every instance reads it at its
//! next tick).
//!
//! Every instance runs the same loop ([`Scheduler::run`]): each tick it
//! reads the schedules' rows ([`crate::storage::Schedules`]), works out the
//! slots due since each one's last claimed slot, and claims them by a
//! compare-and-set of that slot, so with several instances on one database
//! each slot starts one job. A slot claimed by an instance that dies before
//! creating its job is lost (at most once per slot).

pub mod model;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

pub use model::{CatchUp, Overlap, Schedule};

use crate::engine::{Engine, NewJob};
use crate::job::JobOptions;
use crate::storage::{ScheduleChange, ScheduleRow, StorageError};

/// How often the loop looks.
pub const TICK: Duration = Duration::from_millis(250);
/// How often it looks while there is no schedule (for one deployed through
/// another instance; a deploy through this one is looked at at once).
pub const IDLE_TICK: Duration = Duration::from_secs(2);
/// Longest schedule name (a deployed one: letters, digits, `_`, `-`).
pub const MAX_NAME: usize = 64;
/// A slot older than this when first seen counts as missed (`catch_up`).
pub const GRACE: chrono::Duration = chrono::Duration::seconds(2);
/// Next runs shown per schedule.
const NEXT_RUNS: usize = 3;

/// Why a schedule request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleApiError {
    #[error("no schedule named {0:?}")]
    Unknown(String),
    #[error("schedule {0:?} has not run its first tick yet; try again in a moment")]
    NotReady(String),
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Job(#[from] crate::engine::EngineError),
    #[error("{0}")]
    Invalid(String),
    #[error("schedule {0:?} comes from the schedules file; change it there")]
    FromFile(String),
}

/// A schedule as the API shows it.
#[derive(Debug, Serialize)]
pub struct ScheduleView {
    pub name: String,
    pub blueprint: String,
    pub when: String,
    pub timezone: String,
    pub overlap: Overlap,
    pub catch_up: CatchUp,
    pub client: String,
    pub paused: bool,
    /// A run waits for the running job to end (`queue_one`).
    pub pending: bool,
    pub last_slot: Option<DateTime<Utc>>,
    pub last_job_id: Option<Uuid>,
    pub next_runs: Vec<DateTime<Utc>>,
    /// `file` (the schedules file) or `api` (deployed).
    pub origin: &'static str,
}

pub struct Scheduler {
    engine: Engine,
    /// From the schedules file.
    schedules: BTreeMap<String, Arc<Schedule>>,
    /// Deployed through the API, as last read: each with its source.
    deployed: std::sync::Mutex<BTreeMap<String, (String, Arc<Schedule>)>>,
    /// Zone of deployed schedules that name none.
    timezone: chrono_tz::Tz,
    /// A deploy here: the loop looks at once.
    wake: tokio::sync::Notify,
}

impl Scheduler {
    /// Starts the loop over the file's `schedules` and those deployed.
    pub fn start(engine: Engine, schedules: Vec<Schedule>, timezone: chrono_tz::Tz) -> Arc<Self> {
        let scheduler = Self::new(engine, schedules, timezone);
        tokio::spawn(scheduler.clone().run());
        scheduler
    }

    /// The scheduler without its loop: [`Scheduler::tick`] is called by
    /// hand (tests that set the time).
    pub fn new(engine: Engine, schedules: Vec<Schedule>, timezone: chrono_tz::Tz) -> Arc<Self> {
        for s in &schedules {
            tracing::info!(
                "schedule {}: blueprint {} {}, as client {}",
                s.name,
                s.blueprint,
                s.describe(),
                s.client
            );
            if engine.blueprint(&s.blueprint).is_none() {
                tracing::warn!(
                    "schedule {}: blueprint {} is not loaded; its runs fail until it is deployed",
                    s.name,
                    s.blueprint
                );
            }
        }
        Arc::new(Self {
            engine,
            schedules: schedules
                .into_iter()
                .map(|s| (s.name.clone(), Arc::new(s)))
                .collect(),
            deployed: Default::default(),
            timezone,
            wake: tokio::sync::Notify::new(),
        })
    }

    async fn run(self: Arc<Self>) {
        loop {
            if self.engine.shutting_down() {
                return;
            }
            if let Err(e) = self.tick(Utc::now()).await {
                tracing::warn!("schedules: cannot read their progress: {e}; trying again");
            }
            let none = self.schedules.is_empty() && self.deployed().is_empty();
            let pause = if none { IDLE_TICK } else { TICK };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    fn deployed(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (String, Arc<Schedule>)>> {
        self.deployed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The file's schedules and the deployed ones.
    fn all(&self) -> Vec<Arc<Schedule>> {
        let mut all: Vec<Arc<Schedule>> = self.schedules.values().cloned().collect();
        all.extend(self.deployed().values().map(|(_, s)| s.clone()));
        all
    }

    fn find(&self, name: &str) -> Option<Arc<Schedule>> {
        self.schedules
            .get(name)
            .cloned()
            .or_else(|| self.deployed().get(name).map(|(_, s)| s.clone()))
    }

    /// Takes the deployed schedules from their rows (parsing those whose
    /// source changed).
    fn refresh(&self, rows: &BTreeMap<String, ScheduleRow>) {
        let mut deployed = self.deployed();
        deployed.retain(|name, _| rows.get(name).is_some_and(|r| r.source.is_some()));
        for row in rows.values() {
            let Some(source) = &row.source else { continue };
            if self.schedules.contains_key(&row.name)
                || deployed.get(&row.name).is_some_and(|(s, _)| s == source)
            {
                continue;
            }
            match self.compile(&row.name, source) {
                Ok(schedule) => {
                    tracing::info!(
                        "schedule {} (deployed): blueprint {} {}, as client {}",
                        schedule.name,
                        schedule.blueprint,
                        schedule.describe(),
                        schedule.client
                    );
                    deployed.insert(row.name.clone(), (source.clone(), Arc::new(schedule)));
                }
                Err(e) => {
                    tracing::error!("schedule {} (deployed) cannot be read: {e}", row.name);
                    deployed.remove(&row.name);
                }
            }
        }
    }

    /// A deployed schedule's source as a schedule.
    fn compile(&self, name: &str, source: &str) -> Result<Schedule, String> {
        let table: toml::Table =
            toml::from_str(source).map_err(|e| format!("not valid TOML: {}", e.message()))?;
        self.compile_table(name, table)
    }

    /// A deployed schedule's table as a schedule (its client is in it).
    fn compile_table(&self, name: &str, table: toml::Table) -> Result<Schedule, String> {
        model::parse_one(name, toml::Value::Table(table), self.timezone, "default")
    }

    /// Deploys `name` from `text` (a table of `schedules.toml` without its
    /// header): its jobs belong to `client` unless it names one. Replacing
    /// a deployed schedule keeps its progress. Whether it was new.
    pub async fn deploy(
        &self,
        name: &str,
        text: &str,
        client: &str,
    ) -> Result<bool, ScheduleApiError> {
        let valid_name = !name.is_empty()
            && name.len() <= MAX_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_name {
            return Err(ScheduleApiError::Invalid(format!(
                "a schedule's name is 1 to {MAX_NAME} letters, digits, `_` or `-`, not {name:?}"
            )));
        }
        if self.schedules.contains_key(name) {
            return Err(ScheduleApiError::FromFile(name.to_string()));
        }
        if text.len() > model::MAX_SCHEDULES_BYTES {
            return Err(ScheduleApiError::Invalid(format!(
                "{} bytes; at most {} are read",
                text.len(),
                model::MAX_SCHEDULES_BYTES
            )));
        }
        let mut table: toml::Table = toml::from_str(text)
            .map_err(|e| ScheduleApiError::Invalid(format!("not valid TOML: {}", e.message())))?;
        table
            .entry("client")
            .or_insert_with(|| toml::Value::String(client.to_string()));
        let source =
            toml::to_string(&table).map_err(|e| ScheduleApiError::Invalid(e.to_string()))?;
        let schedule = self
            .compile_table(name, table)
            .map_err(|e| ScheduleApiError::Invalid(format!("schedule `{name}`: {e}")))?;
        if self.engine.blueprint(&schedule.blueprint).is_none() {
            return Err(ScheduleApiError::Invalid(format!(
                "schedule `{name}`: no blueprint named {:?} is deployed",
                schedule.blueprint
            )));
        }
        if !self.deployed().contains_key(name) && self.all().len() >= model::MAX_SCHEDULES {
            return Err(ScheduleApiError::Invalid(format!(
                "at most {} schedules are allowed",
                model::MAX_SCHEDULES
            )));
        }
        let now = Utc::now();
        let slot = schedule.latest_at(now).unwrap_or(now);
        let new = !self.rows().await?.contains_key(name);
        let change = ScheduleChange::Deploy { slot, source };
        if !self.change(name, change).await? {
            return Err(ScheduleApiError::FromFile(name.to_string()));
        }
        tracing::info!(
            "schedule {name} {} by {client}: blueprint {} {}",
            if new { "deployed" } else { "replaced" },
            schedule.blueprint,
            schedule.describe()
        );
        self.wake.notify_one();
        Ok(new)
    }

    /// Removes the deployed schedule `name` (on every instance).
    pub async fn remove(&self, name: &str) -> Result<(), ScheduleApiError> {
        if self.schedules.contains_key(name) {
            return Err(ScheduleApiError::FromFile(name.to_string()));
        }
        if !self.change(name, ScheduleChange::Remove).await? {
            return Err(ScheduleApiError::Unknown(name.to_string()));
        }
        self.deployed().remove(name);
        tracing::info!("schedule {name} removed");
        Ok(())
    }

    async fn rows(&self) -> Result<BTreeMap<String, ScheduleRow>, StorageError> {
        Ok(self
            .engine
            .schedule_store()
            .schedule_rows()
            .await?
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect())
    }

    async fn change(&self, name: &str, change: ScheduleChange) -> Result<bool, StorageError> {
        self.engine
            .schedule_store()
            .change_schedule(name, change)
            .await
    }

    /// One look at every schedule.
    pub async fn tick(&self, now: DateTime<Utc>) -> Result<(), StorageError> {
        let rows = self.rows().await?;
        self.refresh(&rows);
        for s in self.all() {
            let s = &*s;
            let Some(row) = rows.get(&s.name) else {
                // First seen: slots from now on.
                let slot = s.latest_at(now).unwrap_or(now);
                self.change(&s.name, ScheduleChange::Init { slot }).await?;
                continue;
            };
            if row.paused {
                continue;
            }
            if row.pending && !self.running(row.last_job).await {
                let mine = ScheduleChange::Pending {
                    from: true,
                    to: false,
                };
                if self.change(&s.name, mine).await? {
                    self.start_job(s, "its queued run").await?;
                }
            }
            self.due(s, row, now).await?;
        }
        Ok(())
    }

    /// Claims and runs the slots of `s` due by `now`.
    async fn due(
        &self,
        s: &Schedule,
        row: &ScheduleRow,
        now: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        let limit = match s.catch_up {
            CatchUp::All => s.catch_up_limit as usize,
            _ => 1,
        };
        let due = s.slots_between(row.last_slot, now, limit);
        let Some(&latest) = due.last() else {
            return Ok(());
        };
        let fire: Vec<DateTime<Utc>> = match s.catch_up {
            CatchUp::All => due,
            CatchUp::Last => vec![latest],
            CatchUp::None if latest >= now - GRACE => vec![latest],
            CatchUp::None => Vec::new(),
        };
        let mut from = row.last_slot;
        if fire.is_empty() {
            // Missed while nobody ran; none runs (catch_up = "none").
            if self
                .change(&s.name, ScheduleChange::Advance { from, to: latest })
                .await?
            {
                tracing::info!(
                    "schedule {}: runs missed while no orchestrator ran were skipped, up to {} (catch_up = none)",
                    s.name,
                    latest.to_rfc3339()
                );
            }
            return Ok(());
        }
        for slot in fire {
            let claim = ScheduleChange::Advance { from, to: slot };
            if !self.change(&s.name, claim).await? {
                // Another instance claimed it.
                return Ok(());
            }
            from = slot;
            self.run_slot(s, row, slot).await?;
        }
        Ok(())
    }

    /// A claimed slot: a job, unless the overlap policy says otherwise.
    async fn run_slot(
        &self,
        s: &Schedule,
        row: &ScheduleRow,
        slot: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        let what = format!("slot {}", slot.to_rfc3339());
        if s.overlap != Overlap::Allow && self.running(row.last_job).await {
            let last = row.last_job.map(|j| j.to_string()).unwrap_or_default();
            if s.overlap == Overlap::QueueOne {
                let queue = ScheduleChange::Pending {
                    from: false,
                    to: true,
                };
                if self.change(&s.name, queue).await? {
                    tracing::info!(
                        "schedule {}: {what} waits for job {last} to end (overlap = queue_one)",
                        s.name
                    );
                } else {
                    tracing::info!(
                        "schedule {}: {what} skipped: job {last} still runs and a run already waits (overlap = queue_one)",
                        s.name
                    );
                }
            } else {
                tracing::info!(
                    "schedule {}: {what} skipped: job {last} still runs (overlap = skip)",
                    s.name
                );
            }
            return Ok(());
        }
        self.start_job(s, &what).await
    }

    /// Whether `job` has not ended (a job that cannot be read has).
    async fn running(&self, job: Option<Uuid>) -> bool {
        let Some(id) = job else { return false };
        matches!(self.engine.get_job(id).await, Ok(Some(j)) if !j.status.is_terminal())
    }

    /// Creates the schedule's job and records it.
    async fn start_job(&self, s: &Schedule, what: &str) -> Result<(), StorageError> {
        match self.create(s).await {
            Ok(id) => {
                tracing::info!(job_id = %id, "schedule {}: {what} started job {id} ({})", s.name, s.blueprint);
                self.change(&s.name, ScheduleChange::Job(id)).await?;
            }
            Err(e) => tracing::error!(
                "schedule {}: {what}: the job could not be created: {e}",
                s.name
            ),
        }
        Ok(())
    }

    async fn create(&self, s: &Schedule) -> Result<Uuid, crate::engine::EngineError> {
        self.engine
            .create_job(NewJob {
                blueprint: s.blueprint.clone(),
                owner: s.client.clone(),
                initial_data: s.input_data.clone(),
                dispatch_timeout: s.dispatch_timeout,
                result_timeout: s.result_timeout,
                options: JobOptions {
                    metadata: s.metadata.clone(),
                    security: s.security.clone(),
                    ..JobOptions::default()
                },
                ..NewJob::default()
            })
            .await
    }

    /// Every schedule with its progress and next runs.
    pub async fn views(&self) -> Result<Vec<ScheduleView>, StorageError> {
        let rows = self.rows().await?;
        self.refresh(&rows);
        let now = Utc::now();
        let mut all = self.all();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all
            .iter()
            .map(|s| {
                let row = rows.get(&s.name);
                let mut next_runs = Vec::new();
                let mut at = now;
                while next_runs.len() < NEXT_RUNS {
                    let Some(next) = s.next_after(at) else { break };
                    next_runs.push(next);
                    at = next;
                }
                ScheduleView {
                    name: s.name.clone(),
                    blueprint: s.blueprint.clone(),
                    when: s.describe(),
                    timezone: s.timezone.to_string(),
                    overlap: s.overlap,
                    catch_up: s.catch_up,
                    client: s.client.clone(),
                    paused: row.is_some_and(|r| r.paused),
                    pending: row.is_some_and(|r| r.pending),
                    last_slot: row.map(|r| r.last_slot),
                    last_job_id: row.and_then(|r| r.last_job),
                    next_runs,
                    origin: if self.schedules.contains_key(&s.name) {
                        "file"
                    } else {
                        "api"
                    },
                }
            })
            .collect())
    }

    /// Pauses or resumes `name` (on every instance).
    pub async fn set_paused(&self, name: &str, paused: bool) -> Result<(), ScheduleApiError> {
        if self.find(name).is_none() {
            return Err(ScheduleApiError::Unknown(name.to_string()));
        }
        if !self.change(name, ScheduleChange::Paused(paused)).await? {
            return Err(ScheduleApiError::NotReady(name.to_string()));
        }
        tracing::info!(
            "schedule {name} {}",
            if paused { "paused" } else { "resumed" }
        );
        Ok(())
    }

    /// Starts `name`'s job now, outside its slots.
    pub async fn trigger(&self, name: &str) -> Result<Uuid, ScheduleApiError> {
        let s = self
            .find(name)
            .ok_or_else(|| ScheduleApiError::Unknown(name.to_string()))?;
        let id = self.create(&s).await?;
        tracing::info!(job_id = %id, "schedule {name}: triggered by hand, job {id}");
        self.change(name, ScheduleChange::Job(id)).await?;
        Ok(id)
    }
}
