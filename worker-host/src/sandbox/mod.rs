//! Everything that touches wasmtime.
//!
//! - [`engine`]: the process-wide engine and its epoch ticker.
//! - [`bindings`]: the generated bindings of the `task-plugin` world.
//! - [`state`]: what one task's store holds (WASI context without any
//!   capability, memory limiter, captured output, progress).
//! - [`task`]: runs one task in a fresh instance under its bounds.

pub mod bindings;
pub mod engine;
/// Outbound HTTP (`wasi:http`) under a plugin's grant.
pub mod http;
pub mod output;
/// Sends a plugin's request to the checked address (TLS by name).
pub mod pinned;
pub mod state;
pub mod task;

pub use engine::{SandboxConfig, SandboxEngine};
pub use task::TaskInput;
