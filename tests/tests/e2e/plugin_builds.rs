//! The plugins build both ways docs/guide/plugins.md names, and what each way produces
//! runs in the worker host.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use crate::support::*;

fn run_echo(component: &std::path::Path) -> serde_json::Value {
    let out = Command::new(binary("worker-host"))
        .arg("run")
        .arg(component)
        .args([
            "--task",
            "echo_task",
            "--params",
            r#"{"message":"Hello World","multiply":3}"#,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "worker-host run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn plain_cargo_build_for_wasm32_wasip2_gives_a_working_component() {
    // plugin-fixtures built them with `cargo build --release --target wasm32-wasip2`.
    let result = run_echo(std::path::Path::new(plugin_fixtures::ECHO_TASK));
    assert_eq!(
        result["data"]["processed_message"],
        "Hello World Hello World Hello World"
    );
}

#[test]
fn cargo_component_build_gives_a_working_component() {
    let version = Command::new("cargo")
        .args(["component", "--version"])
        .output();
    assert!(
        version.is_ok_and(|o| o.status.success()),
        "cargo-component is not installed: `./scripts/setup.sh --with-cargo-component` installs it"
    );
    let target = repo().join("target/plugin-component");
    let status = Command::new("cargo")
        .args(["component", "build", "--release", "--target-dir"])
        .arg(&target)
        .current_dir(repo().join("plugins"))
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .unwrap();
    assert!(status.success(), "cargo component build --release failed");
    let result = run_echo(&target.join("wasm32-wasip1/release/echo_task.wasm"));
    assert_eq!(
        result["data"]["processed_message"],
        "Hello World Hello World Hello World"
    );
    assert_eq!(result["status"], "success");
}
