//! Where schedules keep their progress, shared by every instance on one
//! database: per schedule, the last slot claimed (claims are a
//! compare-and-set on it, so each slot is claimed once), the last job it
//! started, whether it is paused, whether a run waits (`queue_one`), and,
//! for a schedule deployed through the API, its definition.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::StorageError;

/// A schedule's stored progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScheduleRow {
    pub name: String,
    /// The latest slot claimed (or, for a new schedule, the one before it
    /// was first seen).
    pub last_slot: DateTime<Utc>,
    /// The job its latest run started.
    pub last_job: Option<Uuid>,
    pub paused: bool,
    /// A run waits for the running job to end (`overlap = "queue_one"`).
    pub pending: bool,
    /// A deployed schedule's definition (its table in `schedules.toml`
    /// form, with its client); `None` for one from the schedules file.
    pub source: Option<String>,
}

/// One change of a schedule's row; each says whether it took effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleChange {
    /// Creates the row (not paused) unless it exists.
    Init {
        slot: DateTime<Utc>,
    },
    /// Claims `to` if the last slot is still `from`.
    Advance {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
    /// Records the job a run started.
    Job(Uuid),
    Paused(bool),
    /// Sets `pending` to `to` if it is `from`.
    Pending {
        from: bool,
        to: bool,
    },
    /// A deployed schedule: creates the row with its first `slot` and
    /// `source`, or replaces the source of a deployed one (its progress
    /// kept). Does nothing to a row without a source (the file's).
    Deploy {
        slot: DateTime<Utc>,
        source: String,
    },
    /// Deletes a deployed schedule's row.
    Remove,
}

/// Schedules' rows in one instance's storage (memory, SQLite). Blocking.
pub trait ScheduleStorage {
    fn schedule_rows(&self) -> Result<Vec<ScheduleRow>, StorageError>;
    /// Applies `change` to `name`'s row; whether it took effect (false: the
    /// row is missing, or a compare-and-set found another value).
    fn change_schedule(&self, name: &str, change: &ScheduleChange) -> Result<bool, StorageError>;
}

/// The same, as the scheduler reaches it: the engine's backend answers.
#[async_trait::async_trait]
pub trait Schedules: Send + Sync {
    async fn schedule_rows(&self) -> Result<Vec<ScheduleRow>, StorageError>;
    async fn change_schedule(
        &self,
        name: &str,
        change: ScheduleChange,
    ) -> Result<bool, StorageError>;
}

/// [`ScheduleStorage::change_schedule`] on a row in memory.
pub fn apply(
    rows: &mut std::collections::BTreeMap<String, ScheduleRow>,
    name: &str,
    change: &ScheduleChange,
) -> bool {
    let new = |slot: DateTime<Utc>, source: Option<String>| ScheduleRow {
        name: name.to_string(),
        last_slot: slot,
        last_job: None,
        paused: false,
        pending: false,
        source,
    };
    match change {
        ScheduleChange::Init { slot } => {
            if rows.contains_key(name) {
                return false;
            }
            rows.insert(name.to_string(), new(*slot, None));
            return true;
        }
        ScheduleChange::Deploy { slot, source } => {
            return match rows.get_mut(name) {
                None => {
                    rows.insert(name.to_string(), new(*slot, Some(source.clone())));
                    true
                }
                Some(row) if row.source.is_some() => {
                    row.source = Some(source.clone());
                    true
                }
                Some(_) => false,
            };
        }
        ScheduleChange::Remove => {
            if rows.get(name).is_some_and(|r| r.source.is_some()) {
                rows.remove(name);
                return true;
            }
            return false;
        }
        _ => {}
    }
    let Some(row) = rows.get_mut(name) else {
        return false;
    };
    match change {
        ScheduleChange::Init { .. } | ScheduleChange::Deploy { .. } | ScheduleChange::Remove => {
            false
        }
        ScheduleChange::Advance { from, to } => {
            if row.last_slot != *from {
                return false;
            }
            row.last_slot = *to;
            true
        }
        ScheduleChange::Job(job) => {
            row.last_job = Some(*job);
            true
        }
        ScheduleChange::Paused(p) => {
            row.paused = *p;
            true
        }
        ScheduleChange::Pending { from, to } => {
            if row.pending != *from {
                return false;
            }
            row.pending = *to;
            true
        }
    }
}
