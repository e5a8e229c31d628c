//! What a job's history and the update stream record of each change.

use chrono::Utc;
use uuid::Uuid;

use crate::job::{Job, JobEvent, JobStatus};
use crate::storage::JobWrite;

/// A job's new status, as `GET /jobs/stream` sends it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobUpdate {
    pub job_id: Uuid,
    #[serde(skip)]
    pub owner: String,
    pub blueprint: String,
    pub status: JobStatus,
    pub current_state: String,
    pub created_at: chrono::DateTime<Utc>,
    pub updated_at: chrono::DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<chrono::DateTime<Utc>>,
    /// The running task's last progress report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<serde_json::Value>,
    /// The worker event this change records: `{"type", "payload"}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<serde_json::Value>,
}

impl JobUpdate {
    pub fn of(job: &Job) -> Self {
        Self {
            job_id: job.id,
            owner: job.owner.clone(),
            blueprint: job.blueprint.clone(),
            status: job.status,
            current_state: job.current_state.clone(),
            created_at: job.created_at,
            updated_at: job.updated_at,
            finished_at: job.finished_at,
            progress: job.progress.clone(),
            event: job
                .worker_event
                .as_ref()
                .map(|(kind, payload)| serde_json::json!({"type": kind, "payload": payload})),
        }
    }
}

/// Helper to build a write for a changed job.
pub(crate) fn job_write(job: &mut Job, events: Vec<JobEvent>) -> JobWrite {
    job.version += 1;
    job.updated_at = Utc::now();
    JobWrite {
        job: job.clone(),
        events,
        webhook: None,
    }
}

/// What a history entry records; [`EventKind::as_str`] is its name in the
/// job history (`GET /jobs/{id}/history`) and in storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    TaskQueued,
    TaskDispatched,
    TaskRequeued,
    TaskResult,
    TaskFailed,
    RetryScheduled,
    RetriesExhausted,
    Transition,
    Progress,
    WorkerEvent,
    MapStarted,
    Waiting,
    Signal,
    ChildStarted,
    ChildEnded,
    Sleeping,
    Recovered,
    Finished,
    Failed,
    Quarantined,
    Cancelled,
}

impl EventKind {
    pub const ALL: [EventKind; 22] = [
        Self::Created,
        Self::TaskQueued,
        Self::TaskDispatched,
        Self::TaskRequeued,
        Self::TaskResult,
        Self::TaskFailed,
        Self::RetryScheduled,
        Self::RetriesExhausted,
        Self::Transition,
        Self::Progress,
        Self::WorkerEvent,
        Self::MapStarted,
        Self::Waiting,
        Self::Signal,
        Self::ChildStarted,
        Self::ChildEnded,
        Self::Sleeping,
        Self::Recovered,
        Self::Finished,
        Self::Failed,
        Self::Quarantined,
        Self::Cancelled,
    ];

    /// The kind named `name` in a history entry.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::TaskQueued => "task_queued",
            Self::TaskDispatched => "task_dispatched",
            Self::TaskRequeued => "task_requeued",
            Self::TaskResult => "task_result",
            Self::TaskFailed => "task_failed",
            Self::RetryScheduled => "retry_scheduled",
            Self::RetriesExhausted => "retries_exhausted",
            Self::Transition => "transition",
            Self::Progress => "progress",
            Self::MapStarted => "map_started",
            Self::WorkerEvent => "worker_event",
            Self::Waiting => "waiting",
            Self::Signal => "signal",
            Self::ChildStarted => "child_started",
            Self::ChildEnded => "child_ended",
            Self::Sleeping => "sleeping",
            Self::Recovered => "recovered",
            Self::Finished => "finished",
            Self::Failed => "failed",
            Self::Quarantined => "quarantined",
            Self::Cancelled => "cancelled",
        }
    }

    /// The entry of a job that ended with `status` other than `finished`.
    pub fn ended(status: JobStatus) -> Self {
        match status {
            JobStatus::Quarantined => Self::Quarantined,
            JobStatus::Cancelled => Self::Cancelled,
            JobStatus::Finished => Self::Finished,
            _ => Self::Failed,
        }
    }
}

/// A history entry; its text (which may quote what a worker sent) is cut
/// to [`MAX_EVENT_TEXT`] bytes.
pub(crate) fn event(kind: EventKind, message: impl Into<String>) -> JobEvent {
    let message: String = message.into();
    JobEvent {
        at: Utc::now(),
        event: kind.as_str().to_string(),
        message: rxon::text::clip(&message, MAX_EVENT_TEXT).into_owned(),
        task: None,
    }
}

/// A history entry about a task attempt (see [`crate::job::TaskRef`]).
pub(crate) fn task_event(
    kind: EventKind,
    message: impl Into<String>,
    task: crate::job::TaskRef,
) -> JobEvent {
    JobEvent {
        task: Some(task),
        ..event(kind, message)
    }
}

/// Longest text of one history entry.
pub const MAX_EVENT_TEXT: usize = 4096;
