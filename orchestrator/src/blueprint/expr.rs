//! Expressions in blueprints (params and conditions), evaluated with minijinja.
//!
//! The context of every expression is `{initial, results, last, client}`:
//! `initial` is the job's initial data, `results.<state>` the data returned by
//! that state's task (for a parallel state, `results.<state>.<branch>`),
//! `last` the data of the most recent task, and `client` the job's client
//! (`name`, `plan`, `params` from its configuration). A `map` state's
//! params also see `item` (the element) and `index` (its position, from 0).

use std::sync::LazyLock;

use minijinja::{Environment, Expression, UndefinedBehavior};
use serde_json::{Map, Value};

/// The context of expressions, converted once for all the expressions of a
/// step (minijinja converts a JSON context at every evaluation).
pub type Context = minijinja::Value;

/// `{initial, results, last, client}` (see the module's documentation);
/// `last` is `{}` before the first task.
pub fn context(
    initial: &Map<String, Value>,
    results: &Map<String, Value>,
    last: Option<&Map<String, Value>>,
    client: Client<'_>,
) -> Context {
    let empty = Map::new();
    let no_params = Value::Object(Map::new());
    minijinja::context! {
        initial => initial,
        results => results,
        last => last.unwrap_or(&empty),
        client => minijinja::context! {
            name => client.name,
            plan => client.info.and_then(|i| i.get("plan")),
            params => client.info.and_then(|i| i.get("params")).unwrap_or(&no_params),
        },
    }
}

/// A job's client: its name, and its `{plan, params}` when configured.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    pub name: &'a str,
    pub info: Option<&'a Value>,
}

/// `ctx` with a `map` element: `item` and its `index`.
pub fn with_item(ctx: &Context, item: &Value, index: u32) -> Context {
    minijinja::context! { item => item, index => index, ..ctx.clone() }
}

static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env
});

/// A compiled expression.
pub struct Expr {
    source: String,
    compiled: Expression<'static, 'static>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

impl Expr {
    pub fn compile(source: &str) -> Result<Self, String> {
        let compiled = ENV
            .compile_expression_owned(source.to_string())
            .map_err(|e| {
                format!(
                    "bad expression `{source}`: {}",
                    e.detail().unwrap_or(&e.to_string())
                )
            })?;
        Ok(Self {
            source: source.to_string(),
            compiled,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates to JSON; an undefined result is `null`.
    pub fn eval(&self, ctx: &Context) -> Result<Value, String> {
        let value = self
            .compiled
            .eval(ctx)
            .map_err(|e| format!("expression `{}` failed: {e}", self.source))?;
        if value.is_undefined() {
            return Ok(Value::Null);
        }
        serde_json::to_value(&value).map_err(|e| {
            format!(
                "expression `{}` gave a value that is not JSON: {e}",
                self.source
            )
        })
    }

    /// Evaluates as a condition (minijinja truthiness).
    pub fn truthy(&self, ctx: &Context) -> Result<bool, String> {
        self.compiled
            .eval(ctx)
            .map(|v| v.is_true())
            .map_err(|e| format!("condition `{}` failed: {e}", self.source))
    }
}

/// A param value: an expression (TOML string) or a literal (anything else).
#[derive(Debug)]
pub enum ParamValue {
    Expr(Expr),
    Literal(Value),
}

impl ParamValue {
    pub fn from_toml(value: &toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::String(s) => Expr::compile(s).map(Self::Expr),
            other => serde_json::to_value(other)
                .map(Self::Literal)
                .map_err(|e| format!("literal is not JSON: {e}")),
        }
    }

    pub fn eval(&self, ctx: &Context) -> Result<Value, String> {
        match self {
            Self::Expr(e) => e.eval(ctx),
            Self::Literal(v) => Ok(v.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_types_are_kept() {
        let initial = json!({"message": "hi"});
        let ctx = context(
            initial.as_object().unwrap(),
            &Map::new(),
            None,
            Client {
                name: "c",
                info: None,
            },
        );
        assert_eq!(
            Expr::compile("initial.multiply | default(2)")
                .unwrap()
                .eval(&ctx)
                .unwrap(),
            json!(2)
        );
        assert_eq!(
            Expr::compile("initial.message | default('x')")
                .unwrap()
                .eval(&ctx)
                .unwrap(),
            json!("hi")
        );
        assert_eq!(
            Expr::compile("initial.nothing")
                .unwrap()
                .eval(&ctx)
                .unwrap(),
            json!(null)
        );
        assert!(
            Expr::compile("initial.message == 'hi'")
                .unwrap()
                .truthy(&ctx)
                .unwrap()
        );
    }

    #[test]
    fn syntax_errors_are_reported_at_compile_time() {
        let err = Expr::compile("initial.message | | x").unwrap_err();
        assert!(
            err.starts_with("bad expression `initial.message | | x`"),
            "{err}"
        );
    }
}
