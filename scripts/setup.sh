#!/usr/bin/env bash
# Installs what building needs (the wasm32-wasip2 target), builds the plugins
# into dist/plugins and the orchestrator and worker-host binaries.
# Safe to run again. Used by demo.sh and test.sh.
#   --with-cargo-component   also install cargo-component (the tests build the
#                            plugins with it too; the first install takes ~10 min)
#   --with-browser           also install Debian's chromium and chromium-driver
#                            (the dashboard's browser tests; first time only)
#   --with-faketime          also install Debian's libfaketime (a test runs an
#                            orchestrator whose clock is wrong; first time only)
#   --with-s3-server         also install s3s-fs (an S3-compatible server on a
#                            directory; the object-storage tests start it on
#                            loopback; first time only, ~3 min, into ~/.cargo/bin)
set -euo pipefail
cd "$(dirname "$0")/.."

with_component=false
with_browser=false
with_faketime=false
with_s3=false
for arg in "$@"; do
    case "$arg" in
        --with-cargo-component) with_component=true ;;
        --with-browser) with_browser=true ;;
        --with-faketime) with_faketime=true ;;
        --with-s3-server) with_s3=true ;;
        *) echo "setup.sh: unknown option $arg (known: --with-cargo-component, --with-browser, --with-faketime, --with-s3-server)" >&2; exit 2 ;;
    esac
done

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "==> installing the wasm32-wasip2 target"
    rustup target add wasm32-wasip2
fi

if $with_component; then
    if ! rustup target list --installed | grep -qx wasm32-wasip1; then
        echo "==> installing the wasm32-wasip1 target (cargo-component builds for it)"
        rustup target add wasm32-wasip1
    fi
    if ! cargo component --version >/dev/null 2>&1; then
        echo "==> installing cargo-component (first time only; takes a while)"
        cargo install cargo-component --locked
    fi
fi

if $with_faketime && ! compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null; then
    echo "==> installing libfaketime (Debian's libfaketime; first time only)"
    ./scripts/apt-install.sh libfaketime
fi

# The version the object-storage tests were written against; another one may
# answer differently.
S3S_FS_VERSION=0.14.1
if $with_s3 && ! s3s-fs --version 2>/dev/null | grep -q "$S3S_FS_VERSION"; then
    echo "==> installing s3s-fs $S3S_FS_VERSION (an S3-compatible server for the tests; first time only)"
    cargo install s3s-fs --version "$S3S_FS_VERSION" --features binary --locked
fi

if $with_browser && { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; }; then
    echo "==> installing Chromium and chromedriver (Debian's chromium, chromium-driver; first time only)"
    ./scripts/apt-install.sh chromium chromium-driver
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
