#!/usr/bin/env sh
# Tests, then builds {{name}}.wasm with componentize-js (installed by npm
# from package.json: componentize-js 0.23.0 with preview2-shim 0.26.1 pinned).
set -eu
cd "$(dirname "$0")"
[ -d node_modules/@bytecodealliance/componentize-js ] || npm install --no-audit --no-fund --loglevel=error
node --import ./sdk/test-host.mjs --test
node build.mjs . {{name}}.wasm wit/plugin.wit
