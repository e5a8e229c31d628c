#!/usr/bin/env sh
# Tests, then builds {{name}}.wasm with componentize-py
# (`pip install componentize-py==0.25.1`, or set COMPONENTIZE_PY to it).
# Pure-Python libraries from PyPI: `pip install --target deps <lib>` and
# add `-p deps` below.
set -eu
cd "$(dirname "$0")"
python3 -m unittest -q
"${COMPONENTIZE_PY:-componentize-py}" -d wit -w task-plugin componentize -p . app -o {{name}}.wasm
echo "built {{name}}.wasm"
