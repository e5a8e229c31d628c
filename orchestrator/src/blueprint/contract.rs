//! Contracts as JSON Schemas, compiled once: a blueprint's input (checked
//! when a job is created) and output (checked when a job reaches a
//! `finished` end state), compiled when the blueprint loads; and the input
//! schemas workers declare for their skills (`engine/skill_schemas.rs`).

use std::sync::Arc;

use serde_json::Value;

/// Characters of a schema error's message kept in the answer.
const MAX_ERROR_CHARS: usize = 300;

/// A compiled JSON Schema.
#[derive(Clone)]
pub struct Schema {
    validator: Arc<jsonschema::Validator>,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Schema")
    }
}

impl Schema {
    /// Compiles `schema` (a TOML table, as written in the blueprint); `what`
    /// names it in the error. References to other documents are refused:
    /// a blueprint's schemas are self-contained.
    pub fn compile(what: &str, schema: &toml::Table) -> Result<Self, String> {
        let json = serde_json::to_value(schema).map_err(|e| format!("{what}: {e}"))?;
        Self::from_json(&json).map_err(|e| format!("{what} is not a valid JSON Schema: {e}"))
    }

    /// Compiles a schema given as JSON.
    pub fn from_json(schema: &Value) -> Result<Self, String> {
        let validator = jsonschema::validator_for(schema).map_err(|e| e.to_string())?;
        Ok(Self {
            validator: Arc::new(validator),
        })
    }

    /// The first place where `value` breaks the schema:
    /// `<JSON pointer>: <why>` (`(root)` for the value itself).
    pub fn check(&self, value: &Value) -> Result<(), String> {
        let Some(error) = self.validator.iter_errors(value).next() else {
            return Ok(());
        };
        let path = error.instance_path.to_string();
        let path = if path.is_empty() {
            "(root)".to_string()
        } else {
            path
        };
        let mut why = error.to_string();
        if why.chars().count() > MAX_ERROR_CHARS {
            why = why.chars().take(MAX_ERROR_CHARS).collect::<String>() + "…";
        }
        Err(format!("{path}: {why}"))
    }
}

/// The schemas a blueprint declares (each optional).
#[derive(Debug, Clone, Default)]
pub struct Contract {
    pub input: Option<Schema>,
    pub output: Option<Schema>,
}
