//! `chaos_task`: misbehaving and probing skills used by the worker host's tests
//! (and handy for trying the sandbox by hand). Never deploy it for real work.
//!
//! | skill | does |
//! |---|---|
//! | `custom_status` | returns status `needs_review` with the params echoed |
//! | `spin_forever` | loops without end (stopped by the host's timeout) |
//! | `alloc_forever` | allocates without bound (stopped by the memory cap) |
//! | `read_host_file` | tries to read `params.path` from the host filesystem |
//! | `read_env` | reports the environment variables it can see |
//! | `connect` | tries to open a TCP connection to `params.addr` |
//! | `print_output` | writes to stdout and stderr |
//! | `panic` | panics (a trap) |
//! | `sleep` | sleeps `params.ms` milliseconds |
//! | `counter` | bumps a global counter and returns it (1 in a fresh instance) |
//! | `big_result` | returns data holding a string of `params.bytes` bytes |
//! | `big_error` | fails with a message of `params.bytes` bytes |
//! | `big_status` | returns a custom status of `params.bytes` bytes |
//! | `print_flood` | prints `params.bytes` bytes to stdout, then succeeds |
//! | `leak_handles` | creates WASI handles without end (stopped by the handle limit) |
//! | `progress_sleep` | reports progress 0.5 "halfway", then sleeps `params.ms` |
//! | `read_config` | reads config key `params.key` (wasi:config) and, if asked, prints it |
//! | `write_file` | tries to write `params.path` |
//! | `emit_events` | emits each of `params.events` (`{type, payload}`, or `{type, raw}` for a payload string as is) `params.repeat` times, `params.gap_ms` apart, then sleeps `params.ms`; returns what each emit answered |

use std::time::Duration;

use serde_json::{Value, json};

wit_bindgen::generate!({ path: "../../../wit", world: "task-plugin" });

/// `wasi:config/store`, the standard interface for configuration.
mod config {
    wit_bindgen::generate!({
        inline: r#"
            package wasi:config@0.2.0-rc.1;
            interface store {
                variant error { upstream(string), io(string) }
                get: func(key: string) -> result<option<string>, error>;
                get-all: func() -> result<list<tuple<string, string>>, error>;
            }
            world imports { import store; }
        "#,
        world: "imports",
    });
}

use exports::taskworker::plugin::handler::{Guest, Skill, Task, TaskError, TaskOutput};
use taskworker::plugin::types::ErrorKind;

const SKILLS: &[(&str, &str)] = &[
    ("custom_status", "Returns the custom status `needs_review`"),
    ("spin_forever", "Loops forever"),
    ("alloc_forever", "Allocates memory without bound"),
    ("read_host_file", "Tries to read params.path"),
    ("read_env", "Lists visible environment variables"),
    ("connect", "Tries a TCP connection to params.addr"),
    ("print_output", "Writes to stdout and stderr"),
    ("panic", "Panics"),
    ("sleep", "Sleeps params.ms milliseconds"),
    ("counter", "Bumps a global counter and returns it"),
    ("big_result", "Returns params.bytes bytes of data"),
    ("big_error", "Fails with a message of params.bytes bytes"),
    ("big_status", "Returns a status of params.bytes bytes"),
    ("print_flood", "Prints params.bytes bytes to stdout"),
    ("leak_handles", "Creates WASI handles without end"),
    ("progress_sleep", "Reports progress, then sleeps params.ms"),
    ("read_config", "Reads config key params.key"),
    ("write_file", "Tries to write params.path"),
    ("emit_events", "Emits params.events, then sleeps params.ms"),
];

fn bytes_param(params: &Value) -> usize {
    params["bytes"].as_u64().unwrap_or(1 << 20) as usize
}

static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

struct ChaosTask;

fn ok(data: Value) -> Result<TaskOutput, TaskError> {
    Ok(TaskOutput {
        status: "success".into(),
        data: data.to_string(),
    })
}

impl Guest for ChaosTask {
    fn describe() -> Vec<Skill> {
        SKILLS
            .iter()
            .map(|(name, description)| Skill {
                name: (*name).into(),
                version: "1.0.0".into(),
                description: (*description).into(),
                input_schema: None,
                output_schema: None,
                output_statuses: if *name == "custom_status" {
                    vec!["needs_review".into()]
                } else {
                    vec![]
                },
            })
            .collect()
    }

    fn execute(task: Task) -> Result<TaskOutput, TaskError> {
        let params: Value = serde_json::from_str(&task.params).map_err(|e| TaskError {
            kind: ErrorKind::InvalidInput,
            message: format!("params are not JSON: {e}"),
            details: None,
        })?;
        match task.task_type.as_str() {
            "custom_status" => Ok(TaskOutput {
                status: "needs_review".into(),
                data: json!({ "reviewed": false, "params": params }).to_string(),
            }),
            "spin_forever" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "alloc_forever" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "read_host_file" => {
                let path = params["path"].as_str().unwrap_or("/etc/passwd");
                match std::fs::read_to_string(path) {
                    Ok(text) => ok(json!({ "read": true, "bytes": text.len() })),
                    Err(e) => ok(json!({ "read": false, "error": e.to_string() })),
                }
            }
            "read_env" => {
                let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
                ok(json!({ "vars": vars, "home": std::env::var("HOME").ok() }))
            }
            "connect" => {
                let addr = params["addr"].as_str().unwrap_or("127.0.0.1:80");
                match std::net::TcpStream::connect(addr) {
                    Ok(_) => ok(json!({ "connected": true })),
                    Err(e) => ok(json!({ "connected": false, "error": e.to_string() })),
                }
            }
            "print_output" => {
                println!("hello from stdout of {}", task.task_id);
                eprintln!("hello from stderr of {}", task.task_id);
                ok(json!({ "printed": true }))
            }
            "panic" => panic!("chaos_task was asked to panic"),
            "sleep" => {
                let ms = params["ms"].as_u64().unwrap_or(1000);
                std::thread::sleep(Duration::from_millis(ms));
                ok(json!({ "slept_ms": ms }))
            }
            "counter" => {
                let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                ok(json!({ "count": n }))
            }
            "big_result" => ok(json!({ "blob": "x".repeat(bytes_param(&params)) })),
            "big_error" => Err(TaskError {
                kind: ErrorKind::Transient,
                message: "e".repeat(bytes_param(&params)),
                details: None,
            }),
            "big_status" => Ok(TaskOutput {
                status: "s".repeat(bytes_param(&params)),
                data: "{}".into(),
            }),
            "print_flood" => {
                let line = "y".repeat(1023);
                let mut left = bytes_param(&params);
                while left > 0 {
                    println!("{line}");
                    left = left.saturating_sub(1024);
                }
                ok(json!({ "printed": bytes_param(&params) }))
            }
            "progress_sleep" => {
                taskworker::plugin::host::progress(0.5, "halfway");
                let ms = params["ms"].as_u64().unwrap_or(3000);
                std::thread::sleep(Duration::from_millis(ms));
                ok(json!({ "slept_ms": ms }))
            }
            "emit_events" => {
                let mut answers = Vec::new();
                let repeat = params["repeat"].as_u64().unwrap_or(1);
                let gap = Duration::from_millis(params["gap_ms"].as_u64().unwrap_or(0));
                for _ in 0..repeat {
                    for ev in params["events"].as_array().cloned().unwrap_or_default() {
                        let kind = ev["type"].as_str().unwrap_or("");
                        let payload = match ev["raw"].as_str() {
                            Some(raw) => raw.to_string(),
                            None => ev["payload"].to_string(),
                        };
                        let answer = taskworker::plugin::host::emit_event(kind, &payload);
                        std::thread::sleep(gap);
                        answers.push(match answer {
                            Ok(()) => Value::from("ok"),
                            Err(e) => Value::from(e),
                        });
                    }
                }
                let ms = params["ms"].as_u64().unwrap_or(0);
                std::thread::sleep(Duration::from_millis(ms));
                ok(json!({ "answers": answers }))
            }
            "read_config" => {
                let key = params["key"].as_str().unwrap_or("");
                let value = config::wasi::config::store::get(key).ok().flatten();
                if params["print"].as_bool() == Some(true) {
                    println!("config {key} = {value:?}");
                    eprintln!("config {key} = {value:?}");
                }
                ok(
                    json!({ "key": key, "found": value.is_some(), "length": value.map(|v| v.len()) }),
                )
            }
            "write_file" => {
                let path = params["path"].as_str().unwrap_or("/tmp/x");
                match std::fs::write(path, b"written by chaos_task") {
                    Ok(()) => ok(json!({ "written": true })),
                    Err(e) => ok(json!({ "written": false, "error": e.to_string() })),
                }
            }
            "leak_handles" => loop {
                std::mem::forget(wasip2::clocks::monotonic_clock::subscribe_duration(1 << 40));
            },
            other => Err(TaskError {
                kind: ErrorKind::Permanent,
                message: format!("chaos_task does not serve {other}"),
                details: None,
            }),
        }
    }
}

export!(ChaosTask);
