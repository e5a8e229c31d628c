//! Everything that touches wasmtime.
//!
//! - [`engine`]: the [`Sandbox`]: the process-wide engine, its epoch
//!   ticker, the linker and the limits.
//! - [`bindings`]: the generated bindings of the `task-plugin` world.
//! - [`objects`]: the `objects` interface (a task's files in S3).
//! - [`state`]: what one task's store holds (WASI context without any
//!   capability, memory limiter, captured output, progress).
//! - [`task`]: runs one task in a fresh instance under its bounds (reached
//!   through [`crate::plugin_store::Plugin::run`]) and asks a plugin for its
//!   skills.

pub mod bindings;
pub mod engine;
/// Outbound HTTP (`wasi:http`) under a plugin's grant.
pub mod http;
/// The job's files (`objects`) under a plugin's grant.
pub mod objects;
pub mod output;
/// Sends a plugin's request to the checked address (TLS by name).
pub mod pinned;
pub mod state;
pub mod task;

pub use bindings::Task;
pub use engine::{Sandbox, SandboxConfig};
pub use state::{PluginEvent, Progress};
pub use task::RunOptions;
