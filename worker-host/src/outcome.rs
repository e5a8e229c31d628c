//! How one task ended, whoever ran it: the sandbox makes a [`TaskOutcome`];
//! the worker turns it into an RXON result (`worker/tasks.rs`), the local
//! `run` command into JSON (`main.rs`).

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
}

/// A plugin's `details` text as JSON: parsed when it is JSON, else a string.
pub fn details_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}
