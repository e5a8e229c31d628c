//! The worker host: runs task plugins (WebAssembly components of the
//! `task-plugin` world in `wit/`) in a sandbox and serves them to an RXON
//! orchestrator (ours or avtomatika).
//!
//! # Layout
//! Host work is split by how often it runs:
//! - once per process: the [`sandbox::Sandbox`] (wasmtime engine, pooling
//!   allocator, epoch ticker, the linker every plugin is checked against);
//! - once per plugin: [`plugin_store`] (compile, link, pre-instantiate, learn the
//!   plugin's skills from the plugin itself) producing a [`plugin_store::Plugin`];
//! - once per task: [`plugin_store::Plugin::run`], the one way a task runs
//!   (fresh store and instance in [`sandbox::task`], time and memory bounds,
//!   captured output) producing an [`outcome::TaskOutcome`].
//!
//! Every bound on what a plugin supplies is in [`limits`]; what a plugin may
//! do besides compute (config, read-only directories, tighter limits) is
//! declared in its manifest and capped by the operator's policy ([`grants`]).
//!
//! Around that: [`client`] speaks the worker protocol (over HTTP, and over
//! the persistent task [`channel`] when the orchestrator offers it), [`worker`] is the
//! register/heartbeat/poll loop with its task runner (`worker/tasks.rs`), [`plugin_watch`] reloads the
//! plugins directory when it changes (hot deployment), [`config`] is the CLI, and
//! [`telemetry`] sets up logs.

pub mod channel;
pub mod client;
pub mod config;
pub mod declare;
pub mod grants;
pub mod health;
pub mod limits;
pub mod metrics;
pub mod object_cache;
pub mod objects;
pub mod outcome;
pub mod plugin_store;
pub mod plugin_watch;
pub mod sandbox;
pub mod scaffold;
pub mod telemetry;
pub mod worker;
