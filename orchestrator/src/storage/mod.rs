//! Durable job storage of one instance, behind a small trait.
//!
//! One instance keeps active jobs in memory and writes every change through
//! to a [`Storage`] (from the engine's ordered writer, a thread of its own);
//! on start it reloads the jobs that had not finished. Finished jobs are
//! read back from storage when asked for.
//!
//! Backends: [`memory::MemoryStorage`] (nothing survives a restart) and
//! [`sqlite::SqliteStorage`] (one file, the default). Several instances on
//! PostgreSQL keep everything in the database instead, with all of its SQL
//! in `engine/shared_db/`; the same tables (`jobs`, `job_events`,
//! `webhooks`, the deploy tables of [`registry`]) and the job list's
//! statements ([`list`]) serve both SQL databases.

pub mod idempotency;
pub mod list;
pub mod memory;
pub mod registry;
pub mod schedules;
pub mod sqlite;
pub mod usage;

pub use registry::{
    BlueprintRow, COMPONENT_CHUNK, Deploys, PluginVersionRow, RegistryRows, RegistryStorage,
};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::job::{Job, JobEvent, JobStatus};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage: {0}")]
    Backend(String),
    #[error("storage: stored job is unreadable: {0}")]
    Corrupt(String),
}

/// One write: a job's new snapshot and the events that led to it, and the
/// end-of-job webhook it owes, stored in the same transaction.
#[derive(Debug, Clone)]
pub struct JobWrite {
    pub job: Job,
    pub events: Vec<JobEvent>,
    pub webhook: Option<PendingWebhook>,
}

/// An end-of-job webhook not yet delivered (kept across restarts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingWebhook {
    pub job_id: Uuid,
    pub url: String,
    /// The JSON body to POST.
    pub body: String,
}

/// A count as SQL takes it: past `i64::MAX` a database would read a
/// negative count.
pub(crate) fn sql_count(n: usize) -> i64 {
    n.min(i64::MAX as usize) as i64
}

/// Filter of [`Storage::list_jobs`]: newest first, `limit` of them, after
/// skipping `offset` and, with `after`, starting below that cursor.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub owner: Option<String>,
    pub status: Option<JobStatus>,
    pub blueprint: Option<String>,
    pub limit: usize,
    pub offset: usize,
    pub after: Option<JobCursor>,
}

/// A place in the newest-first order of jobs: the last job of a page. The
/// next page holds the jobs created before it (ties by a smaller id), so a
/// walk down the pages sees each job once while new ones arrive on top.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobCursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl JobCursor {
    pub fn of(job: &Job) -> Self {
        Self {
            created_at: job.created_at,
            id: job.id,
        }
    }

    /// Whether `job` is below this place (on a later page).
    pub fn has_below(&self, job: &Job) -> bool {
        (job.created_at, job.id) < (self.created_at, self.id)
    }
}

/// The cursor as clients see it (opaque): `<nanoseconds since 1970>-<id>`.
impl std::fmt::Display for JobCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nanos = self.created_at.timestamp_nanos_opt().unwrap_or_default();
        write!(f, "{nanos}-{}", self.id.simple())
    }
}

impl std::str::FromStr for JobCursor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'after' must be a cursor from a page's `next` field, not {s:?}");
        let (nanos, id) = s.rsplit_once('-').ok_or_else(bad)?;
        let nanos: i64 = nanos.parse().map_err(|_| bad())?;
        Ok(Self {
            created_at: DateTime::from_timestamp_nanos(nanos),
            id: Uuid::try_parse(id).map_err(|_| bad())?,
        })
    }
}

pub use idempotency::{HeldKey, KeyStorage, Keys};
pub use schedules::{ScheduleChange, ScheduleRow, ScheduleStorage, Schedules};
pub use usage::{UsageKey, UsageKind, UsageStorage};

pub trait Storage:
    RegistryStorage + ScheduleStorage + KeyStorage + UsageStorage + Send + Sync + 'static
{
    /// Applies writes atomically, in order; a snapshot never replaces a newer
    /// one. `delivered` names jobs whose webhook is done with (delivered or
    /// given up), applied after the writes.
    fn write(&self, writes: &[JobWrite], delivered: &[Uuid]) -> Result<(), StorageError>;
    /// Webhooks stored and not yet delivered, oldest first.
    fn pending_webhooks(&self) -> Result<Vec<PendingWebhook>, StorageError>;
    fn get_job(&self, id: Uuid) -> Result<Option<Job>, StorageError>;
    /// Newest first.
    fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, StorageError>;
    fn job_events(&self, id: Uuid) -> Result<Vec<JobEvent>, StorageError>;
    /// Deletes up to `limit` finished, failed or cancelled jobs that last
    /// changed before `before`, with their history and webhooks, in one
    /// short transaction; returns their ids (fewer than `limit`: no more
    /// are due). Quarantined jobs are kept.
    fn delete_ended(&self, before: DateTime<Utc>, limit: usize) -> Result<Vec<Uuid>, StorageError>;
    /// Jobs not in a terminal status, oldest first.
    fn unfinished_jobs(&self) -> Result<Vec<Job>, StorageError>;
    /// A short name for logs.
    fn describe(&self) -> String;
}
