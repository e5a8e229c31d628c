//! Host-side bindings of the `task-plugin` world; the only `bindgen!` call.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "task-plugin",
    exports: { default: async },
    // Objects stream from and to the store: the host awaits it (the guest
    // still sees a blocking call).
    imports: {
        "taskworker:plugin/objects.open": async,
        "taskworker:plugin/objects.create": async,
        "taskworker:plugin/objects.[method]reader.read": async,
        "taskworker:plugin/objects.[method]writer.write": async,
        "taskworker:plugin/objects.[method]writer.finish": async,
        "taskworker:plugin/objects.[drop]writer": async | trappable,
    },
    with: {
        "taskworker:plugin/objects.reader": super::objects::Reader,
        "taskworker:plugin/objects.writer": super::objects::Writer,
    },
});

pub use exports::taskworker::plugin::handler::{Skill, Task, TaskError, TaskOutput};
pub use taskworker::plugin::host::LogLevel;
pub use taskworker::plugin::objects::ObjectInfo;
pub use taskworker::plugin::types::ErrorKind;
