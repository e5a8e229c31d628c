//! `failing_task`: always fails with a transient error, as the scenario's Test 2.

wit_bindgen::generate!({ path: "../../wit", world: "task-plugin" });

use exports::taskworker::plugin::handler::{Guest, Skill, Task, TaskError, TaskOutput};
use taskworker::plugin::host::{self, LogLevel};
use taskworker::plugin::types::ErrorKind;

struct FailingTask;

impl Guest for FailingTask {
    fn describe() -> Vec<Skill> {
        vec![Skill {
            name: "failing_task".into(),
            version: "1.0.0".into(),
            description: "Always fails with TRANSIENT_ERROR (for testing failure paths)".into(),
            input_schema: None,
            output_schema: None,
            output_statuses: vec![],
        }]
    }

    fn execute(task: Task) -> Result<TaskOutput, TaskError> {
        host::log(
            LogLevel::Warn,
            &format!("failing task {} on purpose", task.task_id),
        );
        Err(TaskError {
            kind: ErrorKind::Transient,
            message: "Intentional failure for testing".into(),
            details: None,
        })
    }
}

export!(FailingTask);
