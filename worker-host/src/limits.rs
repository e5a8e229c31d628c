//! Every bound on what a plugin supplies, in one place. docs/guide/plugins.md
//! ("Limits") lists them; crossing one gives a named error or a log line that
//! names the limit.
//!
//! Sizes a plugin hands to the host are checked *while* wasmtime copies them
//! out of the guest (its per-call "hostcall fuel"), so an oversize answer is
//! refused before the host allocates for it.

/// Most skills one plugin may declare.
pub const MAX_SKILLS_PER_PLUGIN: usize = 64;
/// Most bytes of one `describe()` answer (all its strings together).
pub const MAX_DESCRIBE_BYTES: usize = 256 << 10;
/// Skill names: 1 to this many bytes of `[A-Za-z0-9_.-]`.
pub const MAX_SKILL_NAME: usize = 128;
/// Longest skill version.
pub const MAX_SKILL_VERSION: usize = 64;
/// Longest skill description.
pub const MAX_SKILL_DESCRIPTION: usize = 4096;
/// Largest input or output JSON Schema of one skill.
pub const MAX_SCHEMA_BYTES: usize = 64 << 10;
/// Most custom statuses one skill may declare.
pub const MAX_OUTPUT_STATUSES: usize = 32;
/// Result statuses: 1 to this many bytes of `[A-Za-z0-9_.:-]`.
pub const MAX_STATUS_NAME: usize = 64;
/// Most bytes all the skills of one worker may take in its registration; a
/// plugin that would push the total over it is not loaded.
pub const MAX_ADVERTISED_BYTES: usize = 512 << 10;
/// Default most bytes a task's result may hand the host (status and data, or
/// error message and details), chosen so the signed result stays under the
/// 1 MiB body limit of our orchestrator and of avtomatika (aiohttp's default).
pub const DEFAULT_MAX_RESULT_BYTES: usize = 1_000_000;
/// Room for the result's envelope (ids, signature, costs) and JSON escaping.
pub const RESULT_ENVELOPE_BYTES: usize = 48 << 10;
/// Most live resource handles (WASI streams, pollables, …) one task may hold.
pub const MAX_HANDLES: usize = 10_000;
/// Most captured output lines logged per stream and task.
pub const MAX_LOGGED_OUTPUT_LINES: usize = 200;
/// JSON up to this size is parsed, signed and encoded on the async thread
/// that has it; larger JSON moves to a blocking thread first (the hop costs
/// more than the work for small documents).
pub const INLINE_JSON_BYTES: usize = 64 << 10;

/// Whether the JSON text of the object `o` is at most `limit` bytes, give
/// or take escapes and number widths; stops walking once past it.
pub fn json_within(o: &serde_json::Map<String, serde_json::Value>, limit: usize) -> bool {
    fn walk(v: &serde_json::Value, left: &mut isize) {
        match v {
            serde_json::Value::String(s) => *left -= s.len() as isize + 2,
            serde_json::Value::Array(a) => {
                *left -= 2 + a.len() as isize;
                for x in a {
                    if *left < 0 {
                        return;
                    }
                    walk(x, left);
                }
            }
            serde_json::Value::Object(o) => fields(o, left),
            _ => *left -= 24,
        }
    }
    fn fields(o: &serde_json::Map<String, serde_json::Value>, left: &mut isize) {
        *left -= 2;
        for (k, x) in o {
            if *left < 0 {
                return;
            }
            *left -= k.len() as isize + 4;
            walk(x, left);
        }
    }
    let mut left = limit as isize;
    fields(o, &mut left);
    left >= 0
}

pub use rxon::text::{clip, for_log};

/// Whether `s` is a valid skill name.
pub fn is_skill_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SKILL_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Whether `s` is a valid result status.
pub fn is_status_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_STATUS_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded() {
        assert!(is_status_name("needs_review"));
        assert!(!is_status_name(""));
        assert!(!is_status_name(&"x".repeat(MAX_STATUS_NAME + 1)));
        assert!(!is_status_name("has space"));
        assert!(is_skill_name("echo_task"));
        assert!(!is_skill_name("echo task"));
    }
}

#[cfg(test)]
mod json_size_tests {
    #[test]
    fn json_within_compares_the_encoded_size() {
        let small = serde_json::json!({"a": "x".repeat(100), "b": [1, 2, 3]});
        let small = small.as_object().unwrap();
        let len = serde_json::to_string(small).unwrap().len();
        assert!(super::json_within(small, len + 100));
        assert!(!super::json_within(small, len / 2));
        let deep = serde_json::json!({"k": [{"s": "y".repeat(70_000)}]});
        assert!(!super::json_within(
            deep.as_object().unwrap(),
            super::INLINE_JSON_BYTES
        ));
    }
}

/// Longest event type name a plugin may emit (`emit-event`).
pub const MAX_EVENT_TYPE: usize = 128;
/// Largest event payload (JSON text) a plugin may emit, checked before it
/// is parsed.
pub const MAX_EVENT_PAYLOAD: usize = 64 * 1024;
/// Most events one task attempt may emit.
pub const MAX_EVENTS_PER_TASK: u32 = 100;
/// Events waiting to be sent before `emit-event` refuses more.
pub const EVENT_BACKLOG: usize = 16;
