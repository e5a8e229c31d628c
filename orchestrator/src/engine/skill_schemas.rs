//! The input schemas workers declare for their skills, compiled once per
//! schema text and kept: a task's params are checked against the schema of
//! the worker about to take it, so params a skill cannot accept fail the
//! job's task as `INVALID_INPUT_ERROR` without a round trip to the worker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::job::Object;

/// Distinct schemas kept compiled; past it the cache starts over (schemas
/// come from worker registrations, a bounded set in practice).
pub const MAX_KEPT: usize = 1024;

/// Characters of a schema error's message kept.
const MAX_ERROR_CHARS: usize = 300;

#[derive(Default)]
pub(crate) struct SkillSchemas {
    /// Schema text → its validator (`None`: not a schema we can compile,
    /// e.g. one with remote references; such a skill's params are not
    /// checked here).
    compiled: Mutex<HashMap<String, Option<Arc<jsonschema::Validator>>>>,
}

impl SkillSchemas {
    /// Why `params` break `schema`: `<JSON pointer>: <why>`, if they do.
    pub(crate) fn check(&self, schema: &Value, params: &Object) -> Option<String> {
        let validator = self.validator(schema)?;
        let params = Value::Object(params.clone());
        let error = validator.iter_errors(&params).next()?;
        let path = error.instance_path.to_string();
        let path = if path.is_empty() {
            "(root)".into()
        } else {
            path
        };
        let mut why = error.to_string();
        if why.chars().count() > MAX_ERROR_CHARS {
            why = why.chars().take(MAX_ERROR_CHARS).collect::<String>() + "…";
        }
        Some(format!("{path}: {why}"))
    }

    fn validator(&self, schema: &Value) -> Option<Arc<jsonschema::Validator>> {
        let key = schema.to_string();
        let mut compiled = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = compiled.get(&key) {
            return found.clone();
        }
        if compiled.len() >= MAX_KEPT {
            compiled.clear();
        }
        let validator = match jsonschema::validator_for(schema) {
            Ok(v) => Some(Arc::new(v)),
            Err(e) => {
                tracing::warn!(
                    "a worker declares an input schema that cannot be compiled ({e}); params of that skill are not checked before dispatch"
                );
                None
            }
        };
        compiled.insert(key, validator.clone());
        validator
    }
}
