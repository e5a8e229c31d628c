//! Host-side bindings of the `task-plugin` world; the only `bindgen!` call.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "task-plugin",
    exports: { default: async },
});

pub use exports::taskworker::plugin::handler::{Skill, Task, TaskError, TaskOutput};
pub use taskworker::plugin::host::LogLevel;
pub use taskworker::plugin::types::ErrorKind;
