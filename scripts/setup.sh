#!/usr/bin/env bash
# Installs what building needs (the wasm32-wasip2 target), builds the plugins
# into dist/plugins and the orchestrator and worker-host binaries.
# Safe to run again. Used by demo.sh and test.sh.
#   --with-cargo-component   also install cargo-component (the tests build the
#                            plugins with it too; the first install takes ~10 min)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "==> installing the wasm32-wasip2 target"
    rustup target add wasm32-wasip2
fi

if [ "${1:-}" = "--with-cargo-component" ]; then
    if ! rustup target list --installed | grep -qx wasm32-wasip1; then
        echo "==> installing the wasm32-wasip1 target (cargo-component builds for it)"
        rustup target add wasm32-wasip1
    fi
    if ! cargo component --version >/dev/null 2>&1; then
        echo "==> installing cargo-component (first time only; takes a while)"
        cargo install cargo-component --locked
    fi
fi

echo "==> building the plugins (plugins/, wasm32-wasip2)"
# Through the test fixtures' build script (tests/fixtures/build.rs), which
# builds the plugin workspace into target/plugin-fixtures: the tests then find
# it built, and nothing is compiled twice.
PLUGINS_OUT=target/plugin-fixtures
cargo build -p plugin-fixtures
mkdir -p dist/plugins
cp "$PLUGINS_OUT"/wasm32-wasip2/release/echo_task.wasm "$PLUGINS_OUT"/wasm32-wasip2/release/failing_task.wasm dist/plugins/

echo "==> building orchestrator and worker-host"
cargo build --bins
