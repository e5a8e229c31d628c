//! `echo_task`: the scenario's echo. Repeats `message` `multiply` times,
//! space-separated; `work_ms` (default 0) simulates work by sleeping.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

wit_bindgen::generate!({ path: "../../wit", world: "task-plugin" });

use exports::taskworker::plugin::handler::{Guest, Skill, Task, TaskError, TaskOutput};
use taskworker::plugin::host::{self, LogLevel};
use taskworker::plugin::types::ErrorKind;

/// Largest `multiply` accepted: keeps a single result well under a megabyte.
const MAX_MULTIPLY: u64 = 10_000;
/// Longest simulated work: one minute.
const MAX_WORK_MS: u64 = 60_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    message: String,
    #[serde(default = "default_multiply")]
    multiply: u64,
    #[serde(default)]
    work_ms: u64,
}

fn default_multiply() -> u64 {
    1
}

struct EchoTask;

impl Guest for EchoTask {
    fn describe() -> Vec<Skill> {
        vec![Skill {
            name: "echo_task".into(),
            version: "1.0.0".into(),
            description: "Repeats `message` `multiply` times, space-separated".into(),
            input_schema: Some(
                json!({
                    "type": "object",
                    "required": ["message"],
                    "properties": {
                        "message": {"type": "string"},
                        "multiply": {"type": "integer", "minimum": 0, "maximum": MAX_MULTIPLY},
                        "work_ms": {"type": "integer", "minimum": 0, "maximum": MAX_WORK_MS}
                    },
                    "additionalProperties": false
                })
                .to_string(),
            ),
            output_schema: Some(
                json!({
                    "type": "object",
                    "properties": {
                        "processed_message": {"type": "string"},
                        "original_message": {"type": "string"},
                        "multiplied_by": {"type": "integer"}
                    }
                })
                .to_string(),
            ),
            output_statuses: vec![],
        }]
    }

    fn execute(task: Task) -> Result<TaskOutput, TaskError> {
        let params: Params = serde_json::from_str(&task.params).map_err(|e| TaskError {
            kind: ErrorKind::InvalidInput,
            message: format!("echo_task params: {e}"),
            details: None,
        })?;
        if params.multiply > MAX_MULTIPLY || params.work_ms > MAX_WORK_MS {
            return Err(TaskError {
                kind: ErrorKind::InvalidInput,
                message: format!(
                    "echo_task params out of range: multiply ≤ {MAX_MULTIPLY}, work_ms ≤ {MAX_WORK_MS}"
                ),
                details: None,
            });
        }
        host::log(
            LogLevel::Info,
            &format!(
                "processing message {:?} x{}",
                params.message, params.multiply
            ),
        );
        if params.work_ms > 0 {
            host::progress(0.0, "working");
            std::thread::sleep(Duration::from_millis(params.work_ms));
        }
        let processed = vec![params.message.as_str(); params.multiply as usize].join(" ");
        host::progress(1.0, "done");
        Ok(TaskOutput {
            status: "success".into(),
            data: json!({
                "processed_message": processed,
                "original_message": params.message,
                "multiplied_by": params.multiply,
            })
            .to_string(),
        })
    }
}

export!(EchoTask);
