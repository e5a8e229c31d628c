#!/usr/bin/env bash
# Installs what building needs (the wasm32-wasip2 target), builds the plugins
# into dist/plugins and the orchestrator and worker-host binaries.
# Safe to run again. Used by demo.sh and test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "==> installing the wasm32-wasip2 target"
    rustup target add wasm32-wasip2
fi

echo "==> building the plugins (plugins/, wasm32-wasip2)"
cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml
mkdir -p dist/plugins
cp plugins/target/wasm32-wasip2/release/echo_task.wasm plugins/target/wasm32-wasip2/release/failing_task.wasm dist/plugins/

echo "==> building orchestrator and worker-host"
cargo build --bins
