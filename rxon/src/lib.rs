//! Wire types and message signing of the RXON worker protocol, as spoken by the
//! avtomatika orchestrator 1.0b30 and its worker SDK (rxon 1.0b17).
//!
//! This crate is the one place where each JSON shape exchanged between a worker
//! and an orchestrator is defined; both `orchestrator` and `worker-host` use it.
//!
//! # Layout
//! - [`blob`]: object storage's configuration hash (rxon's `blob`).
//! - [`model`]: request and response bodies of `/_worker/...`.
//! - [`signing`]: canonical JSON and the HMAC-SHA256 message signature.
//! - [`codes`]: error codes and header names.
//! - [`text`]: peer-supplied text cut for logs.
//! - [`depth`]: the one JSON nesting limit, checked before parsing.
//! - [`deploy`]: plugin deployment (our extension; stock workers never see it).
//! - [`channel`]: the persistent worker channel (our extension, negotiated).

pub mod blob;
pub mod channel;
pub mod codes;
pub mod deploy;
pub mod depth;
pub mod model;
pub mod signing;
pub mod text;

pub use codes::*;
pub use depth::{ENVELOPE_DEPTH, MAX_JSON_DEPTH, TooDeep, check_depth, check_document};
pub use model::*;
pub use signing::{
    SignError, TASK_UNSIGNED_KEYS, canonical_json, seal, sign_message, sign_task, verify_message,
    verify_task,
};
