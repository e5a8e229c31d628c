//! `failing_task`: always fails with a transient error, as the scenario's Test 2.

use serde::Deserialize;
use taskworker_sdk::{Context, JsonSchema, Skill, TaskError};

/// Any params are accepted (and ignored).
#[derive(Deserialize, JsonSchema)]
struct Anything {}

fn fail(ctx: &Context, _: Anything) -> Result<(), TaskError> {
    ctx.warn(&format!("failing task {} on purpose", ctx.task_id));
    Err(TaskError::transient("Intentional failure for testing"))
}

fn skills() -> Vec<Skill> {
    vec![Skill::new(
        "failing_task",
        "1.0.0",
        "Always fails with TRANSIENT_ERROR (for testing failure paths)",
        fail,
    )]
}

taskworker_sdk::export_plugin!(skills);
