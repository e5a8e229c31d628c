#!/usr/bin/env bash
# Creates the two Python virtual environments the compatibility tests use,
# with the exact avtomatika versions they target (the two packages pin
# different orjson versions, hence two venvs):
#   target/compat/venv-orchestrator : avtomatika[history]==1.0b30 (+ rxon 1.0b17;
#                                     the extra brings aiosqlite, for the benchmark's
#                                     avtomatika with a SQLite history database)
#   target/compat/venv-worker       : avtomatika-worker[s3]==1.0b20 (+ rxon 1.0b17;
#                                     the extra brings obstore, for its S3 files)
#   target/compat/venv-tools        : openapi-spec-validator (checks our OpenAPI 3.1 document)
# Safe to run again (skips a venv whose packages are already there). If PyPI
# cannot be reached it says so loudly and writes target/compat/SKIPPED, which
# makes the compatibility tests skip with that message instead of failing.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=target/compat
mkdir -p "$DIR"
rm -f "$DIR/SKIPPED"

make_venv() {
    local name=$1 spec=$2 check=$3
    local venv="$DIR/$name"
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$check" 2>/dev/null; then
        echo "==> $venv is ready ($spec)"
        return 0
    fi
    echo "==> creating $venv with $spec"
    rm -rf "$venv"
    python3 -m venv "$venv"
    if ! "$venv/bin/pip" install --disable-pip-version-check -q $spec; then
        return 1
    fi
}

if ! make_venv venv-orchestrator "avtomatika[history]==1.0b30 rxon==1.0b17" \
        "import importlib.metadata as m, aiosqlite; assert m.version('avtomatika') == '1.0b30'" \
   || ! make_venv venv-worker "avtomatika-worker[s3]==1.0b20 rxon==1.0b17" \
        "import importlib.metadata as m, obstore; assert m.version('avtomatika-worker') == '1.0b20'" \
   || ! make_venv venv-tools "openapi-spec-validator==0.7.2" \
        "import openapi_spec_validator"; then
    if ! python3 -m pip download --no-deps -q -d "$DIR/probe" rxon==1.0b17 >/dev/null 2>&1; then
        msg="PyPI cannot be reached: the avtomatika compatibility tests are SKIPPED"
        echo "!!!!!!!!!! $msg !!!!!!!!!!" >&2
        echo "$msg" > "$DIR/SKIPPED"
        exit 0
    fi
    echo "error: installing the avtomatika packages failed although PyPI is reachable" >&2
    exit 1
fi
