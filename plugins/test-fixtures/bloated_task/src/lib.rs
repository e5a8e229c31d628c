//! `bloated_task`: a hostile plugin whose self-description is huge (5000
//! skills with long descriptions, about 1.7 MB). The worker host must refuse
//! to load it, with a log line naming the limit, and keep serving. Test only.

wit_bindgen::generate!({ path: "../../../wit", world: "task-plugin" });

use exports::taskworker::plugin::handler::{Guest, Skill, Task, TaskError, TaskOutput};
use taskworker::plugin::types::ErrorKind;

struct BloatedTask;

impl Guest for BloatedTask {
    fn describe() -> Vec<Skill> {
        (0..5000)
            .map(|i| Skill {
                name: format!("bloat_{i:04}"),
                version: "1.0.0".into(),
                description: "d".repeat(320),
                input_schema: None,
                output_schema: None,
                output_statuses: vec![],
            })
            .collect()
    }

    fn execute(_task: Task) -> Result<TaskOutput, TaskError> {
        Err(TaskError {
            kind: ErrorKind::Permanent,
            message: "bloated_task never runs".into(),
            details: None,
        })
    }
}

export!(BloatedTask);
