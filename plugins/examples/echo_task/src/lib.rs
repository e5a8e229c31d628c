//! `echo_task`: the scenario's echo. Repeats `message` `multiply` times,
//! space-separated; `work_ms` (default 0) simulates work by sleeping.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use taskworker_sdk::{Context, JsonSchema, Skill, TaskError};

/// Largest `multiply` accepted: keeps a single result well under a megabyte.
const MAX_MULTIPLY: u64 = 10_000;
/// Longest simulated work: one minute.
const MAX_WORK_MS: u64 = 60_000;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Params {
    message: String,
    #[serde(default = "default_multiply")]
    #[schemars(range(max = 10_000))]
    multiply: u64,
    #[serde(default)]
    #[schemars(range(max = 60_000))]
    work_ms: u64,
}

fn default_multiply() -> u64 {
    1
}

/// Fields in this order (alphabetical, as the plugin always sent them):
/// avtomatika takes the last key of a result as the job's `result`, which
/// must stay `processed_message`.
#[derive(Serialize, JsonSchema)]
struct Echo {
    multiplied_by: u64,
    original_message: String,
    processed_message: String,
}

fn echo(ctx: &Context, params: Params) -> Result<Echo, TaskError> {
    if params.multiply > MAX_MULTIPLY || params.work_ms > MAX_WORK_MS {
        return Err(TaskError::invalid_input(format!(
            "echo_task params out of range: multiply ≤ {MAX_MULTIPLY}, work_ms ≤ {MAX_WORK_MS}"
        )));
    }
    ctx.info(&format!(
        "processing message {:?} x{}",
        params.message, params.multiply
    ));
    if params.work_ms > 0 {
        ctx.progress(0.0, "working");
        std::thread::sleep(Duration::from_millis(params.work_ms));
    }
    let processed = vec![params.message.as_str(); params.multiply as usize].join(" ");
    ctx.progress(1.0, "done");
    Ok(Echo {
        multiplied_by: params.multiply,
        original_message: params.message,
        processed_message: processed,
    })
}

fn skills() -> Vec<Skill> {
    vec![Skill::new(
        "echo_task",
        "1.0.0",
        "Repeats `message` `multiply` times, space-separated",
        echo,
    )]
}

taskworker_sdk::export_plugin!(skills);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scenario_message_is_repeated() {
        let ctx = Context::for_test("echo_task");
        let out = echo(
            &ctx,
            Params {
                message: "Hello World".into(),
                multiply: 3,
                work_ms: 0,
            },
        )
        .unwrap();
        assert_eq!(out.processed_message, "Hello World Hello World Hello World");
        assert_eq!(out.multiplied_by, 3);
    }
}
