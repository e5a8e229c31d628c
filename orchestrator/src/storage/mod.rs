//! Durable job storage behind a small trait.
//!
//! The engine keeps active jobs in memory and writes every change through to
//! a [`Storage`]; on start it reloads the jobs that had not finished. Finished
//! jobs are read back from storage when asked for.
//!
//! Backends: [`memory::MemoryStorage`] (nothing survives a restart),
//! [`sqlite::SqliteStorage`] (one file, the default) and
//! [`postgres::PostgresStorage`] (one orchestrator instance per database, for
//! now). Both SQL backends hold the same tables: `jobs`, `job_events`,
//! `webhooks`, and the deploy tables of [`registry`].

pub mod memory;
pub mod postgres;
pub mod registry;
pub mod sqlite;

pub use registry::{BlueprintRow, PluginVersionRow, RegistryRows, RegistryStorage};

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

/// Filter of [`Storage::list_jobs`].
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub owner: Option<String>,
    pub status: Option<JobStatus>,
    pub blueprint: Option<String>,
    pub limit: usize,
    pub offset: usize,
}

pub trait Storage: RegistryStorage + Send + Sync + 'static {
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
    /// Jobs not in a terminal status, oldest first.
    fn unfinished_jobs(&self) -> Result<Vec<Job>, StorageError>;
    /// A short name for logs.
    fn describe(&self) -> String;
}
