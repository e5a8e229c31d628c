//! The input schemas workers declare for their skills, compiled once per
//! schema text and kept: a task's params are checked against the schema of
//! the worker about to take it, so params a skill cannot accept fail the
//! job's task as `INVALID_INPUT_ERROR` without a round trip to the worker.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::Value;

use crate::blueprint::contract::Schema;
use crate::job::Object;

/// Distinct schemas kept compiled; past it the cache starts over (schemas
/// come from worker registrations, a bounded set in practice).
pub const MAX_KEPT: usize = 1024;

#[derive(Default)]
pub(crate) struct SkillSchemas {
    /// Schema text → the compiled schema (`None`: not a schema we can
    /// compile, e.g. one with remote references; such a skill's params are
    /// not checked here).
    compiled: Mutex<HashMap<String, Option<Schema>>>,
}

impl SkillSchemas {
    /// Why `params` break `schema`: `<JSON pointer>: <why>`, if they do.
    pub(crate) fn check(&self, schema: &Value, params: &Object) -> Option<String> {
        let schema = self.compiled(schema)?;
        schema.check(&Value::Object(params.clone())).err()
    }

    fn compiled(&self, schema: &Value) -> Option<Schema> {
        let key = schema.to_string();
        let mut compiled = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = compiled.get(&key) {
            return found.clone();
        }
        if compiled.len() >= MAX_KEPT {
            compiled.clear();
        }
        let schema = Schema::from_json(schema)
            .inspect_err(|e| {
                tracing::warn!(
                    "a worker declares an input schema that cannot be compiled ({e}); params of that skill are not checked before dispatch"
                )
            })
            .ok();
        compiled.insert(key, schema.clone());
        schema
    }
}
