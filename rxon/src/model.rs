//! Bodies of the worker API. Optional fields are omitted when absent, as the
//! Python packages do (they drop nulls); unknown fields are accepted and ignored.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A JSON object.
pub type Object = Map<String, Value>;

/// `security` of a signed message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecurityContext {
    /// Lowercase hex HMAC-SHA256 over the canonical message (see [`crate::signing`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// The worker id that signed; must equal the sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer_id: Option<String>,
}

/// One skill (task type) a worker serves.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SkillInfo {
    pub name: String,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub skill_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_statuses: Option<Vec<String>>,
}

/// `POST /_worker/workers/register`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerRegistration {
    pub worker_id: String,
    #[serde(default = "default_worker_type")]
    pub worker_type: String,
    #[serde(default)]
    pub supported_skills: Vec<SkillInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_skills: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_software: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skills_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Object>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<SecurityContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
}

fn default_worker_type() -> String {
    "generic".into()
}

/// `200` answer to a registration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RegisterResponse {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// `PATCH /_worker/workers/{id}` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Heartbeat {
    pub worker_id: String,
    /// `idle`, `busy`, `full` or `offline`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_tasks: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supported_skills: Option<Vec<SkillInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_skills: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skills_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<SecurityContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
}

/// `200` answer to a heartbeat.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HeartbeatResponse {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_full_sync: Option<bool>,
    /// Tasks the worker lists in `current_tasks` that it should stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_task_ids: Option<Vec<String>>,
    /// Our orchestrator says so when it does not know the worker: re-register.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_registration: Option<bool>,
}

/// A file a message refers to by URI (`s3://<bucket>/<key>`), as rxon's
/// `FileMetadata`: results carry one per data key that names a file
/// (`data_metadata`), tasks the ones their params name (`params_metadata`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileMetadata {
    pub uri: String,
    /// Omitted when 0, as rxon's model omits its defaults: the SDK signs
    /// and checks a task's `sig` over its own model's form, so a field it
    /// would drop must not be sent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Object>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Files by the data key (or params key) that names them.
pub type FilesByKey = std::collections::BTreeMap<String, FileMetadata>;

/// A task handed to a worker by the long-poll.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskPayload {
    pub job_id: String,
    pub task_id: String,
    #[serde(rename = "type")]
    pub task_type: String,
    #[serde(default)]
    pub params: Object,
    #[serde(default)]
    pub tracing_context: Object,
    /// The files the params name by key, from earlier results'
    /// `data_metadata`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params_metadata: Option<FilesByKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<f64>,
    /// Unix seconds by which the result is due. We send an integer (the
    /// float of avtomatika 1.0b30 breaks its own SDK) and accept either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
    /// The job's `metadata`, `security` and `policy`, as its client gave
    /// them (not covered by `sig`'s exclusions except `security`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Object>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<Object>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Object>,
}

/// `error` of a failed task.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskErrorInfo {
    #[serde(default = "default_error_code")]
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

fn default_error_code() -> String {
    crate::codes::error_code::TRANSIENT.into()
}

/// `POST /_worker/tasks/result`: flat, `status` missing means success.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskResult {
    pub job_id: String,
    pub task_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_worker_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Object>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskErrorInfo>,
    /// The files `data` names, by data key (the SDK's uploads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_metadata: Option<FilesByKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub costs: Option<Object>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Object>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<SecurityContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
}

impl TaskResult {
    /// The status, `success` when absent.
    pub fn status(&self) -> &str {
        self.status
            .as_deref()
            .unwrap_or(crate::codes::status::SUCCESS)
    }
}

/// `200` answer to a result: `accepted` with a transition, or `ignored` with a reason.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResultResponse {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `POST /_worker/events`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerEventPayload {
    pub event_id: String,
    pub worker_id: String,
    pub origin_worker_id: String,
    pub event_type: String,
    #[serde(default)]
    pub payload: Object,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_job_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<SecurityContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
}

/// JSON error body of every failed HTTP request: `{"error": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What rxon 1.0b17's `to_dict` gives for the same file (it omits
    /// defaults), so a task's `sig` matches the SDK's own computation:
    /// `to_dict(FileMetadata(uri="s3://b/k", size=0))` == `{"uri": "s3://b/k"}`.
    #[test]
    fn file_metadata_is_written_as_rxons_model_writes_it() {
        let empty = FileMetadata {
            uri: "s3://b/k".into(),
            size: 0,
            etag: None,
            metadata: None,
        };
        assert_eq!(
            serde_json::to_value(&empty).unwrap(),
            serde_json::json!({"uri": "s3://b/k"})
        );
        let full = FileMetadata {
            size: 5,
            etag: Some("e".into()),
            ..empty
        };
        assert_eq!(
            serde_json::to_value(&full).unwrap(),
            serde_json::json!({"uri": "s3://b/k", "size": 5, "etag": "e"})
        );
        let read: FileMetadata = serde_json::from_value(serde_json::json!({"uri": "u"})).unwrap();
        assert_eq!(read.size, 0);
    }
}
