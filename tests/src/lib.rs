//! End-to-end tests live in `tests/`: they start the real `orchestrator` and
//! `worker-host` binaries as processes on free loopback ports and drive them
//! over HTTP, as a user would. See `tests/support/mod.rs` for the harness.
