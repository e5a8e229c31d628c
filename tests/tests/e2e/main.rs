//! End-to-end tests: real orchestrator and worker-host processes, real
//! plugins, real HTTP, the machine's PostgreSQL, the real avtomatika packages
//! and a headless Chromium. One test binary; each module is one area, and
//! `support` holds what they share (the process stack, requests, databases,
//! the browser).
//!
//! Run one area with `cargo test -p e2e --test e2e <module>::`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod availability;
mod cluster;
mod compat;
mod control;
mod creates;
mod dashboard;
mod deploy;
mod hardening;
mod job_lists;
mod languages;
mod matching;
mod objects;
mod plugin_builds;
mod scenario;
mod schedules;
mod security;
mod workflows;
