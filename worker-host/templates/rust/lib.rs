//! `{{name}}`: a task plugin (a WebAssembly component for the worker host).
//!
//! Test:  cargo test
//! Build: cargo build --release --target wasm32-wasip2
//! Try:   worker-host run target/wasm32-wasip2/release/{{name}}.wasm --params '{"name": "World"}'

use serde::{Deserialize, Serialize};
use taskworker_sdk::{Context, JsonSchema, Skill, TaskError};

/// What a task of `{{name}}` is given (its JSON Schema is generated from this).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Who to greet.
    name: String,
}

/// What it returns.
#[derive(Serialize, JsonSchema)]
struct Greeting {
    text: String,
}

fn run(ctx: &Context, params: Params) -> Result<Greeting, TaskError> {
    if params.name.trim().is_empty() {
        return Err(TaskError::invalid_input("`name` must not be empty"));
    }
    ctx.info(&format!("greeting {}", params.name));
    ctx.progress(1.0, "done");
    Ok(Greeting {
        text: format!("Hello, {}!", params.name),
    })
}

fn skills() -> Vec<Skill> {
    vec![Skill::new("{{name}}", "0.1.0", "Greets `name`", run)]
}

taskworker_sdk::export_plugin!(skills);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_greets() {
        let ctx = Context::for_test("{{name}}");
        let out = run(&ctx, Params { name: "World".into() }).unwrap();
        assert_eq!(out.text, "Hello, World!");
    }

    #[test]
    fn bad_params_are_invalid_input() {
        let skill = &skills()[0];
        let ctx = Context::for_test("{{name}}");
        let e = skill.call(&ctx, r#"{"name": 7}"#).unwrap_err();
        assert!(e.message().starts_with("{{name}} params"), "{e}");
    }
}
