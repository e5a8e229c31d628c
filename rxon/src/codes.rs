//! Protocol constants: version, header names, paths and error codes.

/// The rxon protocol version we speak; sent in `X-RXON-Version`.
pub const PROTOCOL_VERSION: &str = "1.0b17";

pub const HEADER_WORKER_TOKEN: &str = "x-worker-token";
pub const HEADER_WORKER_ID: &str = "x-worker-id";
pub const HEADER_RXON_VERSION: &str = "x-rxon-version";

/// Seconds a signed message's `timestamp` may differ from the receiver's clock.
pub const MAX_CLOCK_SKEW_SECS: i64 = 60;

/// Error codes a task failure carries in `error.code`.
pub mod error_code {
    pub const TRANSIENT: &str = "TRANSIENT_ERROR";
    pub const PERMANENT: &str = "PERMANENT_ERROR";
    pub const INVALID_INPUT: &str = "INVALID_INPUT_ERROR";
    pub const INTEGRITY_MISMATCH: &str = "INTEGRITY_MISMATCH_ERROR";
    pub const DEPENDENCY: &str = "DEPENDENCY_ERROR";
    pub const CONTRACT_VIOLATION: &str = "CONTRACT_VIOLATION_ERROR";
    pub const SECURITY: &str = "SECURITY_ERROR";
    pub const RESOURCE_EXHAUSTED: &str = "RESOURCE_EXHAUSTED_ERROR";
    pub const TIMEOUT: &str = "TIMEOUT_ERROR";
}

/// Task result statuses with a fixed meaning.
pub mod status {
    pub const SUCCESS: &str = "success";
    pub const FAILURE: &str = "failure";
    pub const CANCELLED: &str = "cancelled";
}

/// The worker event type of a progress report (`{"progress", "message"}`).
pub const EVENT_PROGRESS: &str = "progress";

/// The outcomes of a task with a fixed meaning: the statuses above and the
/// error codes (the closed set metrics label task outcomes with).
pub const FIXED_OUTCOMES: &[&str] = &[
    status::SUCCESS,
    status::FAILURE,
    status::CANCELLED,
    error_code::TRANSIENT,
    error_code::PERMANENT,
    error_code::INVALID_INPUT,
    error_code::INTEGRITY_MISMATCH,
    error_code::DEPENDENCY,
    error_code::CONTRACT_VIOLATION,
    error_code::SECURITY,
    error_code::RESOURCE_EXHAUSTED,
    error_code::TIMEOUT,
];

/// Paths of the worker API, relative to the orchestrator's base URL.
pub mod path {
    pub const REGISTER: &str = "/_worker/workers/register";
    pub const RESULT: &str = "/_worker/tasks/result";
    pub const EVENTS: &str = "/_worker/events";

    /// `PATCH` heartbeat path for a worker.
    pub fn heartbeat(worker_id: &str) -> String {
        format!("/_worker/workers/{worker_id}")
    }

    /// `GET` long-poll path for a worker.
    pub fn next_task(worker_id: &str) -> String {
        format!("/_worker/workers/{worker_id}/tasks/next")
    }
}

/// True when `id` is a valid worker id: `^[a-zA-Z0-9_-]{1,128}$`.
pub fn is_valid_worker_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
