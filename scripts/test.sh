#!/usr/bin/env bash
# Runs every test: unit, integration (real wasmtime, real SQLite, real HTTP),
# end-to-end (real processes). Installs what it needs. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> relative links in the Markdown files"
python3 scripts/check-links.py

./scripts/setup.sh --with-cargo-component --with-browser --with-faketime --with-s3-server
# Python venvs with the real avtomatika packages, for the compatibility tests.
./scripts/compat-venvs.sh
# Python and JavaScript plugins (componentize-py, componentize-js) and the
# plugins' own tests, the guest SDK's among them.
./scripts/build-lang-plugins.sh
echo "==> the Rust guest SDK's and echo_task's own tests (natively)"
cargo test --manifest-path plugins/Cargo.toml -p taskworker-sdk -p echo_task --target-dir target/plugin-native
echo "==> building the benchmarks (they are measured with cargo bench, not run as tests)"
cargo test --workspace --benches --no-run
echo "==> cargo test --workspace"
cargo test --workspace
