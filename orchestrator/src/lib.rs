//! The orchestrator: accepts jobs over HTTP, moves each through its
//! blueprint, and hands tasks to workers over the RXON worker API.
//!
//! # Layout
//! - [`blueprint`]: declarative workflows (TOML), validated and compiled.
//! - [`job`]: the job model.
//! - [`engine`]: the state machine, task queues, workers, timers, over one
//!   of two backends: one instance (memory or SQLite storage) or several
//!   sharing PostgreSQL (all of whose SQL is in `engine/shared_db/`).
//! - [`storage`]: one instance's durable storage (SQLite, in-memory) behind
//!   a trait, and the async [`storage::Deploys`] the registry writes through.
//! - [`objects`]: jobs' files in object storage (S3-compatible or a local
//!   directory), and their cleanup.
//! - [`registry`]: plugin uploads, their check, and the versions offered.
//! - [`api`]: the HTTP API (client and worker), errors and auth.
//! - [`ui`]: the web dashboard at `/` (assets compiled in).
//! - [`config`]: configuration file, CLI and environment.
//! - [`egress`]: where webhooks may connect (private addresses refused).
//! - [`secs`]: durations from outside, parsed once into bounded values.
//! - [`metrics`], [`telemetry`]: Prometheus metrics and logs.

pub mod api;
pub mod blueprint;
pub mod config;
pub mod egress;
pub mod engine;
pub mod job;
pub mod metrics;
pub mod objects;
pub mod registry;
pub mod schedule;
pub mod secs;
pub mod storage;
pub mod telemetry;
pub mod ui;
