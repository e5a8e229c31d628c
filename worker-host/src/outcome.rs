//! The result of one task, as the worker reports it.

use rxon::error_code;
use serde_json::{Map, Value};

/// How a task ended.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskOutcome {
    /// The plugin returned a result: `success` or a custom status, with data.
    Completed {
        status: String,
        data: Map<String, Value>,
    },
    /// The task failed; `code` is an RXON error code such as `TRANSIENT_ERROR`;
    /// `details` is the plugin's JSON text, if it gave any.
    Failed {
        code: String,
        message: String,
        details: Option<String>,
    },
    /// The orchestrator asked to stop it (its job was cancelled); the store
    /// was dropped. The worker reports nothing for it.
    Cancelled,
}

impl TaskOutcome {
    pub fn failed(code: &str, message: impl Into<String>) -> Self {
        Self::Failed {
            code: code.to_string(),
            message: message.into(),
            details: None,
        }
    }

    /// The RXON `status` of this outcome.
    pub fn status(&self) -> &str {
        match self {
            Self::Completed { status, .. } => status,
            Self::Failed { .. } => rxon::status::FAILURE,
            Self::Cancelled => rxon::status::CANCELLED,
        }
    }

    /// The outcome as the JSON the local `run` mode prints.
    pub fn to_json(&self) -> Value {
        match self {
            Self::Cancelled => serde_json::json!({ "status": rxon::status::CANCELLED }),
            Self::Completed { status, data } => {
                serde_json::json!({ "status": status, "data": data })
            }
            Self::Failed {
                code,
                message,
                details,
            } => serde_json::json!({
                "status": rxon::status::FAILURE,
                "error": { "code": code, "message": message, "details": details.as_deref().map(details_value) }
            }),
        }
    }

    /// Fills the outcome part of an RXON result.
    pub fn into_result(self, job_id: &str, task_id: &str, worker_id: &str) -> rxon::TaskResult {
        let (status, data, error) = match self {
            Self::Cancelled => (rxon::status::CANCELLED.to_string(), None, None),
            Self::Completed { status, data } => (status, Some(data), None),
            Self::Failed {
                code,
                message,
                details,
            } => (
                rxon::status::FAILURE.to_string(),
                Some(Map::new()),
                Some(rxon::TaskErrorInfo {
                    code,
                    message,
                    details: details.as_deref().map(details_value),
                }),
            ),
        };
        rxon::TaskResult {
            job_id: job_id.into(),
            task_id: task_id.into(),
            worker_id: Some(worker_id.into()),
            origin_worker_id: Some(worker_id.into()),
            status: Some(status),
            data,
            error,
            costs: None,
            metadata: None,
            security: None,
            timestamp: None,
        }
    }
}

/// A plugin's `details` text as JSON: parsed when it is JSON, else a string.
fn details_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// The RXON error code of a plugin's error kind.
pub fn code_of(kind: crate::sandbox::bindings::ErrorKind) -> &'static str {
    use crate::sandbox::bindings::ErrorKind;
    match kind {
        ErrorKind::Transient => error_code::TRANSIENT,
        ErrorKind::Permanent => error_code::PERMANENT,
        ErrorKind::InvalidInput => error_code::INVALID_INPUT,
        ErrorKind::IntegrityMismatch => error_code::INTEGRITY_MISMATCH,
        ErrorKind::Dependency => error_code::DEPENDENCY,
        ErrorKind::ResourceExhausted => error_code::RESOURCE_EXHAUSTED,
    }
}
