//! What the engine refuses, typed; the API maps each variant to one status
//! in one place (`impl From<EngineError> for ApiError`).

use crate::job::JobStatus;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    /// 400: the job cannot be created as asked.
    #[error("{0}")]
    InvalidJob(String),
    /// 404.
    #[error("Job not found")]
    JobNotFound,
    /// 409.
    #[error("Job already ended with status {0}")]
    AlreadyEnded(JobStatus),
    /// 404: the worker must register (again).
    #[error("Worker not found: {0} is not registered; register first")]
    UnknownWorker(String),
    /// 403: a worker acting on a task or job that is not its own.
    #[error("{0}")]
    NotAssigned(String),
    /// 429: `max_workers` reached.
    #[error("{0}")]
    TooManyWorkers(String),
    /// 429 with `Retry-After`: the client has `max_active_jobs_per_client`
    /// jobs that have not ended.
    #[error("{0}")]
    TooManyActiveJobs(String),
    /// 409: a decision or signal for a job that is not waiting for one.
    #[error("{0}")]
    NotWaiting(String),
    /// 400: a decision or signal the job's wait state does not name.
    #[error("{0}")]
    UnknownSignal(String),
    /// 403: a wrong (or already used) approval token.
    #[error("Invalid approval token")]
    BadApprovalToken,
    /// 500.
    #[error("could not store the job: {0}")]
    Storage(String),
}

impl EngineError {
    /// A new job of `owner`, who has `max` active already.
    pub fn too_many_active_jobs(max: usize, owner: &str) -> Self {
        Self::TooManyActiveJobs(format!(
            "client {owner} has {max} jobs that have not ended, the most one client may (max_active_jobs_per_client); retry when some have ended"
        ))
    }

    /// A new worker id past `max_workers`.
    pub fn too_many_workers(max: usize, worker_id: &str) -> Self {
        Self::TooManyWorkers(format!(
            "Too many workers: {max} are registered (max_workers); worker {} was not registered",
            rxon::text::clip(worker_id, 128)
        ))
    }
}
