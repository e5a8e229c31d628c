//! One nesting limit for the data of jobs, tasks and results, checked on
//! the raw bytes where the data enters, before it is parsed: a client's
//! body, a worker's body or channel frame (the orchestrator), a plugin's
//! result (the worker host). Data within it stays readable everywhere it
//! travels: serde_json, on both sides and in storage, stops at 128 levels,
//! and the envelopes around data (a task payload, a result, a stored job)
//! add only a few.

/// Deepest nesting of arrays and objects in a job's, task's or result's
/// data (`MAX_JSON_DEPTH`).
pub const MAX_JSON_DEPTH: usize = 64;

/// Levels a document may add around its data (`{"initial_data": …}`, a
/// result's `{"data": …}`, a channel frame's `{"body": …}`).
pub const ENVELOPE_DEPTH: usize = 4;

/// The error of JSON nested deeper than its limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("JSON nested deeper than {MAX_JSON_DEPTH} levels (MAX_JSON_DEPTH)")]
pub struct TooDeep;

/// Checks a request body or frame: its data at most [`MAX_JSON_DEPTH`]
/// deep within at most [`ENVELOPE_DEPTH`] levels of envelope.
pub fn check_document(json: &[u8]) -> Result<(), TooDeep> {
    check_depth(json, MAX_JSON_DEPTH + ENVELOPE_DEPTH)
}

/// Checks that `json` (valid or not: a scan of brackets outside strings,
/// one pass, no allocation) nests at most `limit` levels.
pub fn check_depth(json: &[u8], limit: usize) -> Result<(), TooDeep> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Err(TooDeep);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!(
            "{}1{}",
            "{\"a\":[".repeat(levels / 2),
            "]}".repeat(levels / 2)
        )
    }

    #[test]
    fn the_limit_counts_arrays_and_objects_and_ignores_strings() {
        assert_eq!(check_depth(nested(64).as_bytes(), MAX_JSON_DEPTH), Ok(()));
        assert_eq!(
            check_depth(nested(66).as_bytes(), MAX_JSON_DEPTH),
            Err(TooDeep)
        );
        assert_eq!(check_document(nested(68).as_bytes()), Ok(()));
        assert_eq!(check_document(nested(70).as_bytes()), Err(TooDeep));
        // Brackets inside strings (escaped quotes too) do not count.
        let text = format!("{{\"s\": \"\\\"{}\"}}", "[".repeat(1000));
        assert_eq!(check_depth(text.as_bytes(), 2), Ok(()));
        // What passes, serde_json parses, also wrapped a few levels deeper.
        let wrapped = format!("{{\"task\":{{\"params\":{{\"m\":{}}}}}}}", nested(68));
        assert!(serde_json::from_str::<serde_json::Value>(&wrapped).is_ok());
    }
}
