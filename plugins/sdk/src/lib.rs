//! Write a task plugin as plain functions: each skill is a function from a
//! params struct to a result struct, and the SDK does the rest (the WIT
//! bindings, JSON in and out, the skill description with JSON Schemas
//! generated from the types, and the error mapping).
//!
//! ```ignore
//! use serde::{Deserialize, Serialize};
//! use taskworker_sdk::{Context, JsonSchema, Skill, TaskError};
//!
//! #[derive(Deserialize, JsonSchema)]
//! struct Params { name: String }
//!
//! #[derive(Serialize, JsonSchema)]
//! struct Greeting { text: String }
//!
//! fn greet(ctx: &Context, p: Params) -> Result<Greeting, TaskError> {
//!     ctx.info(&format!("greeting {}", p.name));
//!     Ok(Greeting { text: format!("Hello, {}!", p.name) })
//! }
//!
//! fn skills() -> Vec<Skill> {
//!     vec![Skill::new("greet", "1.0.0", "Says hello", greet)]
//! }
//!
//! taskworker_sdk::export_plugin!(skills);
//! ```
//!
//! Params that do not parse are an `invalid-input` error naming the skill
//! (`greet params: missing field ...`); a result is `success` unless the
//! function calls [`Context::set_status`] with one of the statuses the skill
//! declares ([`Skill::statuses`]).
//!
//! Off WebAssembly (e.g. `cargo test` of a plugin on the build machine) the
//! host calls print to stderr, so skills can be unit-tested as functions.

use std::cell::RefCell;

pub use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The bindings of the `task-plugin` world (`wit/plugin.wit`), for
/// [`export_plugin!`]; plugins rarely need them directly.
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "task-plugin",
        pub_export_macro: true,
        export_macro_name: "export_task_plugin",
        default_bindings_module: "taskworker_sdk::bindings",
    });
}

use bindings::exports::taskworker::plugin::handler as wit;
use bindings::taskworker::plugin::types::ErrorKind;

/// Why a task failed, as the orchestrator's retry rules see it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskError {
    kind: ErrorKind,
    message: String,
    details: Option<serde_json::Value>,
}

impl TaskError {
    /// Worth retrying (`TRANSIENT_ERROR`).
    pub fn transient(message: impl Into<String>) -> Self {
        Self::of(ErrorKind::Transient, message)
    }
    /// Retrying will not help (`PERMANENT_ERROR`).
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::of(ErrorKind::Permanent, message)
    }
    /// The params are wrong (`INVALID_INPUT_ERROR`).
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::of(ErrorKind::InvalidInput, message)
    }
    /// Something the task depends on is unavailable (`DEPENDENCY_ERROR`).
    pub fn dependency(message: impl Into<String>) -> Self {
        Self::of(ErrorKind::Dependency, message)
    }
    /// Out of a resource (`RESOURCE_EXHAUSTED_ERROR`).
    pub fn resource_exhausted(message: impl Into<String>) -> Self {
        Self::of(ErrorKind::ResourceExhausted, message)
    }
    /// Data failed an integrity check (`INTEGRITY_MISMATCH_ERROR`).
    pub fn integrity_mismatch(message: impl Into<String>) -> Self {
        Self::of(ErrorKind::IntegrityMismatch, message)
    }

    /// More detail for the job's error, as a JSON object.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    fn of(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            details: None,
        }
    }
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for TaskError {}

/// The task being run, and the host's services for it.
#[derive(Debug, Default)]
pub struct Context {
    pub task_id: String,
    pub job_id: String,
    pub task_type: String,
    status: RefCell<Option<String>>,
}

impl Context {
    /// A context for calling a skill function directly (tests).
    pub fn for_test(task_type: &str) -> Self {
        Self {
            task_id: "test-task".into(),
            job_id: "test-job".into(),
            task_type: task_type.into(),
            status: RefCell::default(),
        }
    }

    pub fn debug(&self, message: &str) {
        host_log(Level::Debug, message);
    }
    pub fn info(&self, message: &str) {
        host_log(Level::Info, message);
    }
    pub fn warn(&self, message: &str) {
        host_log(Level::Warn, message);
    }
    pub fn error(&self, message: &str) {
        host_log(Level::Error, message);
    }

    /// Reports progress: `fraction` in 0..=1 (clamped) and a short message.
    pub fn progress(&self, fraction: f32, message: &str) {
        let fraction = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        #[cfg(target_arch = "wasm32")]
        bindings::taskworker::plugin::host::progress(fraction, message);
        #[cfg(not(target_arch = "wasm32"))]
        eprintln!("[progress {:.0} %] {message}", fraction * 100.0);
    }

    /// Sends the event `event_type` with a JSON object `payload` to the
    /// orchestrator: a blueprint that maps the type (`events = { <type> =
    /// "<state>" }`) moves the job on before this task ends. The error says
    /// which bound was crossed (see docs/guide/plugins.md).
    pub fn emit(&self, event_type: &str, payload: &serde_json::Value) -> Result<(), String> {
        let payload = payload.to_string();
        #[cfg(target_arch = "wasm32")]
        return bindings::taskworker::plugin::host::emit_event(event_type, &payload);
        #[cfg(not(target_arch = "wasm32"))]
        {
            eprintln!("[event {event_type}] {payload}");
            Ok(())
        }
    }

    /// Ends the task with this status instead of `success` (one the skill
    /// declares with [`Skill::statuses`], so a blueprint can map it).
    pub fn set_status(&self, status: &str) {
        *self.status.borrow_mut() = Some(status.to_string());
    }

    /// The status set with [`Context::set_status`], if any.
    pub fn status(&self) -> Option<String> {
        self.status.borrow().clone()
    }
}

/// The job's files in object storage, as the plugin's manifest grants
/// (`[objects]`: `read`, `write`, `read_prefixes`). Readers and writers
/// stream; errors are the host's messages (a bound or grant crossed).
///
/// ```ignore
/// use std::io::{Read, Write};
/// let mut input = taskworker_sdk::objects::open("input.bin")?;   // or an s3:// URI
/// let mut out = taskworker_sdk::objects::create("output.bin")?;
/// std::io::copy(&mut input, &mut out)?;
/// let info = out.finish()?;          // info.uri: s3://<bucket>/<job>/output.bin
/// ```
pub mod objects {
    /// An object written: return its `uri` in the result's data, and the
    /// worker names it in the result's `data_metadata`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ObjectInfo {
        pub uri: String,
        pub size: u64,
        pub etag: Option<String>,
    }

    /// Most bytes the host takes or gives in one call.
    const CHUNK: usize = 1 << 20;
    /// Bytes a writer gathers before handing them to the host.
    const BUFFER: usize = 256 << 10;

    #[cfg(target_arch = "wasm32")]
    use crate::bindings::taskworker::plugin::objects as host;

    /// An object being read ([`std::io::Read`]).
    pub struct Reader {
        #[cfg(target_arch = "wasm32")]
        inner: host::Reader,
        size: u64,
    }

    impl Reader {
        /// The object's size in bytes.
        pub fn size(&self) -> u64 {
            self.size
        }
    }

    impl std::io::Read for Reader {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            #[cfg(target_arch = "wasm32")]
            {
                let max = buf.len().min(CHUNK) as u32;
                let bytes = self.inner.read(max).map_err(std::io::Error::other)?;
                let n = bytes.len().min(buf.len());
                buf[..n].copy_from_slice(&bytes[..n]);
                Ok(n)
            }
            #[cfg(not(target_arch = "wasm32"))]
            {
                let _ = (buf, CHUNK);
                Err(std::io::Error::other(OUTSIDE))
            }
        }
    }

    /// An object being written ([`std::io::Write`]); nothing is stored
    /// until [`Writer::finish`], and a writer dropped unfinished leaves
    /// nothing behind.
    pub struct Writer {
        #[cfg(target_arch = "wasm32")]
        inner: host::Writer,
        buffer: Vec<u8>,
    }

    impl Writer {
        /// Stores the object.
        pub fn finish(mut self) -> Result<ObjectInfo, String> {
            self.flush_buffer()?;
            #[cfg(target_arch = "wasm32")]
            {
                let info = self.inner.finish()?;
                Ok(ObjectInfo {
                    uri: info.uri,
                    size: info.size,
                    etag: info.etag,
                })
            }
            #[cfg(not(target_arch = "wasm32"))]
            Err(OUTSIDE.into())
        }

        fn flush_buffer(&mut self) -> Result<(), String> {
            if self.buffer.is_empty() {
                return Ok(());
            }
            #[cfg(target_arch = "wasm32")]
            for chunk in self.buffer.chunks(CHUNK) {
                self.inner.write(chunk)?;
            }
            self.buffer.clear();
            #[cfg(not(target_arch = "wasm32"))]
            return Err(OUTSIDE.into());
            #[cfg(target_arch = "wasm32")]
            Ok(())
        }
    }

    impl std::io::Write for Writer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.buffer.extend_from_slice(buf);
            if self.buffer.len() >= BUFFER {
                self.flush_buffer().map_err(std::io::Error::other)?;
            }
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            self.flush_buffer().map_err(std::io::Error::other)
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    const OUTSIDE: &str = "objects are only available to a plugin run by the worker host";

    /// Opens an object to read: an `s3://<bucket>/<key>` URI, or the name of
    /// one of the job's files (the client's upload, else an earlier output).
    pub fn open(uri: &str) -> Result<Reader, String> {
        #[cfg(target_arch = "wasm32")]
        {
            let inner = host::open(uri)?;
            let size = inner.size();
            Ok(Reader { inner, size })
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let _ = uri;
            Err(OUTSIDE.into())
        }
    }

    /// Creates the job's output `name` (`s3://<bucket>/<job>/<name>`).
    pub fn create(name: &str) -> Result<Writer, String> {
        #[cfg(target_arch = "wasm32")]
        {
            let inner = host::create(name)?;
            Ok(Writer {
                inner,
                buffer: Vec::with_capacity(BUFFER),
            })
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let _ = (name, BUFFER);
            Err(OUTSIDE.into())
        }
    }
}

#[derive(Clone, Copy)]
enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

fn host_log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    {
        use bindings::taskworker::plugin::host::{LogLevel, log};
        let level = match level {
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        log(level, message);
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let name = match level {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        };
        eprintln!("[{name}] {message}");
    }
}

type Run = Box<dyn Fn(&Context, &str) -> Result<String, TaskError>>;

/// Builds a JSON Schema as text. Called only by `describe`: a task runs in
/// a fresh instance that builds the skill list anew, and generating the
/// schemas there was most of the guest's work for a small task
/// (docs/benchmarks.md, fifth pass).
type SchemaOf = fn() -> String;

/// One task type the plugin serves.
pub struct Skill {
    name: String,
    version: String,
    description: String,
    input_schema: SchemaOf,
    output_schema: SchemaOf,
    statuses: Vec<String>,
    run: Run,
}

impl Skill {
    /// A skill served by `run`; its input and output schemas come from `P`
    /// and `R`.
    pub fn new<P, R>(
        name: &str,
        version: &str,
        description: &str,
        run: fn(&Context, P) -> Result<R, TaskError>,
    ) -> Self
    where
        P: DeserializeOwned + JsonSchema + 'static,
        R: Serialize + JsonSchema + 'static,
    {
        let skill = name.to_string();
        Self {
            name: name.into(),
            version: version.into(),
            description: description.into(),
            input_schema: || schemars::schema_for!(P).as_value().to_string(),
            output_schema: || schemars::schema_for!(R).as_value().to_string(),
            statuses: Vec::new(),
            run: Box::new(move |ctx, params| {
                let params: P = serde_json::from_str(params)
                    .map_err(|e| TaskError::invalid_input(format!("{skill} params: {e}")))?;
                let result = run(ctx, params)?;
                serde_json::to_string(&result).map_err(|e| {
                    TaskError::permanent(format!("{skill} result cannot be encoded: {e}"))
                })
            }),
        }
    }

    /// Statuses besides `success` the skill may end with.
    pub fn statuses(mut self, statuses: &[&str]) -> Self {
        self.statuses = statuses.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Runs the skill on JSON params, as the host would: the status and the
    /// result as JSON text.
    pub fn call(&self, ctx: &Context, params: &str) -> Result<(String, String), TaskError> {
        let data = (self.run)(ctx, params)?;
        let status = ctx.status().unwrap_or_else(|| "success".into());
        if status != "success" && !self.statuses.contains(&status) {
            return Err(TaskError::permanent(format!(
                "{} ended with status {status:?}, which it does not declare (declared: {:?})",
                self.name, self.statuses
            )));
        }
        Ok((status, data))
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// `describe` for [`export_plugin!`].
#[doc(hidden)]
pub fn describe(skills: &[Skill]) -> Vec<wit::Skill> {
    skills
        .iter()
        .map(|s| wit::Skill {
            name: s.name.clone(),
            version: s.version.clone(),
            description: s.description.clone(),
            input_schema: Some((s.input_schema)()),
            output_schema: Some((s.output_schema)()),
            output_statuses: s.statuses.clone(),
        })
        .collect()
}

/// `execute` for [`export_plugin!`].
#[doc(hidden)]
pub fn execute(skills: &[Skill], task: wit::Task) -> Result<wit::TaskOutput, wit::TaskError> {
    let ctx = Context {
        task_id: task.task_id,
        job_id: task.job_id,
        task_type: task.task_type,
        status: RefCell::default(),
    };
    let outcome = match skills.iter().find(|s| s.name == ctx.task_type) {
        Some(skill) => skill.call(&ctx, &task.params),
        None => Err(TaskError::invalid_input(format!(
            "this plugin does not serve {:?}",
            ctx.task_type
        ))),
    };
    match outcome {
        Ok((status, data)) => Ok(wit::TaskOutput { status, data }),
        Err(e) => Err(wit::TaskError {
            kind: e.kind,
            message: e.message,
            details: e.details.map(|d| d.to_string()),
        }),
    }
}

/// Exports the plugin: `export_plugin!(skills)` with `fn skills() ->
/// Vec<Skill>`.
#[macro_export]
macro_rules! export_plugin {
    ($skills:path) => {
        struct __TaskworkerPlugin;
        impl $crate::bindings::exports::taskworker::plugin::handler::Guest for __TaskworkerPlugin {
            fn describe() -> ::std::vec::Vec<$crate::bindings::exports::taskworker::plugin::handler::Skill> {
                $crate::describe(&$skills())
            }
            fn execute(
                task: $crate::bindings::exports::taskworker::plugin::handler::Task,
            ) -> ::std::result::Result<
                $crate::bindings::exports::taskworker::plugin::handler::TaskOutput,
                $crate::bindings::exports::taskworker::plugin::handler::TaskError,
            > {
                $crate::execute(&$skills(), task)
            }
        }
        $crate::bindings::export_task_plugin!(__TaskworkerPlugin with_types_in $crate::bindings);
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Params {
        n: u32,
    }

    #[derive(Serialize, JsonSchema)]
    struct Out {
        twice: u32,
    }

    fn double(ctx: &Context, p: Params) -> Result<Out, TaskError> {
        if p.n == 7 {
            ctx.set_status("unlucky");
        }
        if p.n == 13 {
            ctx.set_status("undeclared");
        }
        Ok(Out { twice: p.n * 2 })
    }

    #[test]
    fn a_skill_parses_params_runs_and_encodes_its_result() {
        let skill = Skill::new("double", "1.0.0", "x2", double).statuses(&["unlucky"]);
        let ctx = Context::for_test("double");
        assert_eq!(
            skill.call(&ctx, r#"{"n": 4}"#).unwrap(),
            ("success".into(), r#"{"twice":8}"#.into())
        );
        let e = skill.call(&ctx, r#"{"n": "four"}"#).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.message().starts_with("double params: "), "{e}");
        let ctx = Context::for_test("double");
        assert_eq!(skill.call(&ctx, r#"{"n": 7}"#).unwrap().0, "unlucky");
        let ctx = Context::for_test("double");
        let e = skill.call(&ctx, r#"{"n": 13}"#).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Permanent);
    }

    #[test]
    fn the_description_carries_schemas_generated_from_the_types() {
        let skills = [Skill::new("double", "1.0.0", "x2", double).statuses(&["unlucky"])];
        let d = describe(&skills);
        let input: serde_json::Value =
            serde_json::from_str(d[0].input_schema.as_deref().unwrap()).unwrap();
        assert_eq!(input["properties"]["n"]["type"], "integer");
        assert_eq!(input["required"][0], "n");
        assert_eq!(input["additionalProperties"], false);
        let output: serde_json::Value =
            serde_json::from_str(d[0].output_schema.as_deref().unwrap()).unwrap();
        assert_eq!(output["properties"]["twice"]["type"], "integer");
        assert_eq!(d[0].output_statuses, vec!["unlucky".to_string()]);
    }
}
