#!/usr/bin/env bash
# Builds the Python and JavaScript plugins into target/lang-plugins/ and runs
# their own tests; installs the tools on first use, from the registries only:
#   componentize-py 0.25.1 (PyPI) in target/tools/venv-componentize-py
#   componentize-js 0.23.0 + preview2-shim 0.26.1 (npm, package-lock.json)
#       in plugins/js/node_modules
#   a Python plugin's requirements.txt (PyPI, pure-Python packages) in
#       target/tools/py-deps/<plugin>, bundled into its component
# A component is rebuilt only when its sources, its SDK or the WIT changed.
# Safe to run again. Used by test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/lang-plugins
TOOLS=target/tools
mkdir -p "$OUT" "$TOOLS"

# Whether $1 is missing or older than any file under the other arguments.
stale() {
    local out=$1
    shift
    [ ! -f "$out" ] || [ -n "$(find "$@" -type f -newer "$out" -not -path '*/__pycache__/*' -not -path '*/node_modules/*' -print -quit)" ]
}

echo "==> Python plugins (componentize-py)"
VENV=$TOOLS/venv-componentize-py
if ! "$VENV/bin/componentize-py" --version 2>/dev/null | grep -q "0.25.1"; then
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --disable-pip-version-check -q componentize-py==0.25.1
fi
root=$PWD
for dir in plugins/python/*/; do
    name=$(basename "$dir")
    [ "$name" = sdk ] && continue
    deps=$TOOLS/py-deps/$name
    paths=(-p "$dir" -p plugins/python/sdk)
    pythonpath=$root/plugins/python/sdk
    if [ -f "$dir/requirements.txt" ]; then
        if [ ! -f "$deps/.installed" ] || [ "$dir/requirements.txt" -nt "$deps/.installed" ]; then
            rm -rf "$deps"
            "$VENV/bin/pip" install --disable-pip-version-check -q --target "$deps" -r "$dir/requirements.txt"
            touch "$deps/.installed"
        fi
        paths+=(-p "$deps")
        pythonpath=$pythonpath:$root/$deps
    fi
    echo "    $name: its tests"
    (cd "$dir" && PYTHONPATH="$pythonpath" python3 -m unittest -q 2>&1 | tail -1)
    out=$OUT/${name}_py.wasm
    if stale "$out" "$dir" plugins/python/sdk wit; then
        echo "    $name: building $out"
        "$VENV/bin/componentize-py" -d wit -w task-plugin componentize "${paths[@]}" app -o "$out.tmp" >/dev/null
        mv "$out.tmp" "$out"
    fi
done

echo "==> JavaScript plugins (componentize-js)"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "    installing Node.js and npm (Debian's nodejs, npm; first time only)"
    ./scripts/apt-install.sh nodejs npm
fi
if [ ! -d plugins/js/node_modules/@bytecodealliance/componentize-js ]; then
    (cd plugins/js && npm ci --no-audit --no-fund --loglevel=error)
fi
for dir in plugins/js/*/; do
    name=$(basename "$dir")
    case "$name" in sdk|node_modules) continue ;; esac
    echo "    $name: its tests"
    (cd "$dir" && node --import ../sdk/test-host.mjs --test 2>&1 | grep -E "^# (pass|fail)" | tr '\n' ' '; echo)
    out=$OUT/${name}_js.wasm
    if stale "$out" "$dir" plugins/js/build.mjs wit; then
        echo "    $name: building $out"
        node plugins/js/build.mjs "$dir" "$out.tmp" >/dev/null
        mv "$out.tmp" "$out"
    fi
done
ls -l "$OUT"
