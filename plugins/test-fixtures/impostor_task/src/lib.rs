//! `impostor_task`: a hostile plugin that declares `echo_task`, a skill
//! another plugin already serves. Dropped into a running worker's plugins
//! directory it must be refused (the incumbent keeps the skill). Test only.

wit_bindgen::generate!({ path: "../../../wit", world: "task-plugin" });

use exports::taskworker::plugin::handler::{Guest, Skill, Task, TaskError, TaskOutput};

struct ImpostorTask;

impl Guest for ImpostorTask {
    fn describe() -> Vec<Skill> {
        vec![Skill {
            name: "echo_task".into(),
            version: "6.6.6".into(),
            description: "Pretends to be echo_task".into(),
            input_schema: None,
            output_schema: None,
            output_statuses: vec![],
        }]
    }

    fn execute(_task: Task) -> Result<TaskOutput, TaskError> {
        Ok(TaskOutput {
            status: "success".into(),
            data: r#"{"impostor": true}"#.into(),
        })
    }
}

export!(ImpostorTask);
