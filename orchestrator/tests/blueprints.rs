//! Blueprint loading: golden error messages name the file, the state and the problem.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use orchestrator::blueprint::{self, Action};

fn err(text: &str) -> String {
    blueprint::parse("bp.toml", text)
        .expect_err("should be rejected")
        .to_string()
}

const HEAD: &str = "name = \"b\"\napi_endpoint = \"/jobs/b\"\napi_version = \"v1\"\n";

#[test]
fn the_shipped_blueprints_load() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../blueprints");
    let all = blueprint::load_dir(&dir).unwrap();
    let test_flow = all.iter().find(|b| b.name == "test_flow").unwrap();
    assert_eq!(test_flow.create_path.as_deref(), Some("/api/v1/jobs/test"));
    assert_eq!(test_flow.start, "start");
    assert!(matches!(
        test_flow.state("completed").unwrap().action,
        Action::End { finished: true }
    ));
    assert!(all.iter().any(|b| b.name == "failing_flow"));
}

#[test]
fn golden_errors() {
    let cases: &[(&str, &str)] = &[
        (
            "[states.a]\nstart = true\ndispatch.task = \"t\"\ndispatch.on = { success = \"nowhere\" }\n[states.done]\nend = \"finished\"\n",
            "bp.toml: state `a`: transition `success` goes to unknown state `nowhere`",
        ),
        (
            "[states.a]\nstart = true\nend = \"finished\"\n[states.b]\nstart = true\nend = \"failed\"\n",
            "bp.toml: several start states (a, b); mark exactly one",
        ),
        (
            "[states.a]\nend = \"finished\"\n",
            "bp.toml: no start state: mark one state with `start = true`",
        ),
        (
            "[states.a]\nstart = true\ngoto = [{ to = \"a\" }]\n",
            "bp.toml: no end state: add a state with `end = \"finished\"` or `end = \"failed\"`",
        ),
        (
            "[states.a]\nstart = true\ndispatch.task = \"t\"\ndispatch.params.x = \"initial.x | | 2\"\ndispatch.on = { success = \"done\" }\n[states.done]\nend = \"finished\"\n",
            "bp.toml: state `a` param `x`: bad expression `initial.x | | 2`: unexpected `|`",
        ),
        (
            "[states.a]\nstart = true\n[states.done]\nend = \"finished\"\n",
            "bp.toml: state `a` has no action: give it one of `end`, `dispatch`, `parallel`, `map`, `run`, `goto`, `sleep` or `wait`",
        ),
        (
            "[states.a]\nstart = true\nend = \"done\"\n",
            "bp.toml: state `a` end must be \"finished\" or \"failed\", not \"done\"",
        ),
        (
            "[states.a]\nstart = true\ngoto = [{ when = \"initial.x >\", to = \"done\" }]\n[states.done]\nend = \"finished\"\n",
            "bp.toml: state `a` bad expression `initial.x >`: unexpected end of input",
        ),
        (
            "[states.a]\nstart = true\nsleep = { seconds = 5, until = \"initial.at\", next = \"done\" }\n[states.done]\nend = \"finished\"\n",
            "bp.toml: state `a` sleep needs exactly one of `seconds` or `until`",
        ),
        (
            "[states.a]\nstart = true\nsleep = { seconds = 5 }\n[states.done]\nend = \"finished\"\n",
            "bp.toml: not a valid blueprint: line 6 (`sleep = { seconds = 5 }`): missing field `next`",
        ),
        (
            "[states.a]\nstart = true\nsleep = { seconds = 5, next = \"later\" }\n[states.done]\nend = \"finished\"\n",
            "bp.toml: state `a`: sleep `next` goes to unknown state `later`",
        ),
        (
            "[states.a]\nstart = true\nsleep = { seconds = 1e9, next = \"done\" }\n[states.done]\nend = \"finished\"\n",
            "bp.toml: state `a` 'sleep.seconds' must be a positive number of seconds, at most 2592000 (30 days); got 1000000000",
        ),
        (
            "[states.a]\nstart = true\nmap = { over = \"initial.xs\", task = \"t\", max_in_flight = 0, next = \"done\" }\n[states.done]\nend = \"finished\"\n",
            "bp.toml: state `a` map.max_in_flight must be between 1 and 1000; got 0",
        ),
        (
            "[states.a]\nstart = true\nmap = { over = \"initial.xs\", task = \"t\", on_item_failure = \"skip\", next = \"done\" }\n[states.done]\nend = \"finished\"\n",
            "bp.toml: state `a` map.on_item_failure must be \"fail_fast\" or \"continue\", not \"skip\"",
        ),
        (
            "[states.a]\nstart = true\nwait = { on = { ok = \"done\" }, timeout = 5 }\n[states.done]\nend = \"finished\"\n",
            "bp.toml: state `a` wait.timeout and wait.on_timeout go together",
        ),
        (
            "[states.a]\nstart = true\nwait = { on = { \"no way\" = \"done\" } }\n[states.done]\nend = \"finished\"\n",
            "bp.toml: state `a` wait.on name \"no way\" must be 1 to 64 letters",
        ),
        (
            "[states.a]\nstart = true\ndispatch = { task = \"t\", on = { success = \"done\" }, events = { progress = \"done\" } }\n[states.done]\nend = \"finished\"\n",
            "bp.toml: state `a` dispatch.events cannot name `progress`",
        ),
        (
            "[states.a]\nstart = true\ndispatch = { task = \"t\", on = { success = \"done\" }, events = { ready = \"nowhere\" } }\n[states.done]\nend = \"finished\"\n",
            "bp.toml: state `a`: event `ready` goes to unknown state `nowhere`",
        ),
        (
            "[states.a]\nstart = true\ndispatch = { task = \"t\", on = { success = \"done\" }, rate = { key = \"initial.c\", per_second = 0 } }\n[states.done]\nend = \"finished\"\n",
            "bp.toml: state `a` rate.per_second must be from 0.000012 (one a day) to 100000 (got 0)",
        ),
        (
            "[states.a]\nstart = true\ndispatch = { task = \"t\", on = { success = \"done\" }, rate = { key = \"initial.c\", per_second = 5, burst = 0 } }\n[states.done]\nend = \"finished\"\n",
            "bp.toml: state `a` rate.burst must be from 1 to 100000 (got 0)",
        ),
        (
            "[states.a]\nstart = true\ndispatch = { task = \"t\", on = { success = \"done\" }, rate = { key = \"initial.c\" } }\n[states.done]\nend = \"finished\"\n",
            "bp.toml: not a valid blueprint: line 6",
        ),
    ];
    for (states, expected) in cases {
        let got = err(&format!("{HEAD}{states}"));
        assert!(
            got.starts_with(expected),
            "\nexpected: {expected}\n     got: {got}"
        );
    }
    let got = err(
        "name = \"b\"\napi_endpoint = \"jobs\"\n[states.a]\nstart = true\nend = \"finished\"\n",
    );
    assert_eq!(
        got,
        "bp.toml: api_endpoint \"jobs\" must be a plain path starting with `/`"
    );
    let got = err("name = \"b\"\napi_endpoint = \"/x\"\nstates = 3\n");
    assert!(
        got.starts_with("bp.toml: not a valid blueprint: line 3 (`states = 3`): invalid type"),
        "{got}"
    );
    let got =
        err("name = \"b\"\napi_endpoint = \"/x\"\nstart = \"a\"\n[states.a]\nend = \"finished\"\n");
    assert!(
        got.starts_with(
            "bp.toml: not a valid blueprint: line 3 (`start = \"a\"`): unknown field `start`"
        ),
        "{got}"
    );
}

#[test]
fn duplicate_endpoints_are_rejected_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let bp = |name: &str| {
        format!(
            "name = \"{name}\"\napi_endpoint = \"/jobs/same\"\n[states.a]\nstart = true\nend = \"finished\"\n"
        )
    };
    std::fs::write(dir.path().join("a.toml"), bp("a")).unwrap();
    std::fs::write(dir.path().join("b.toml"), bp("b")).unwrap();
    let err = blueprint::load_dir(dir.path()).err().unwrap().to_string();
    assert!(
        err.contains("b.toml: blueprint `b` (/api/jobs/same) clashes with `a`"),
        "{err}"
    );
}

#[test]
fn a_schema_that_is_not_one_stops_the_blueprint_from_loading() {
    let got = err(&format!(
        "{HEAD}[input_schema]\ntype = \"nope\"\n[states.a]\nstart = true\nend = \"finished\"\n"
    ));
    assert!(
        got.starts_with("bp.toml: input_schema is not a valid JSON Schema: "),
        "{got}"
    );
}
