#!/usr/bin/env bash
# CPU per job of our stack alone, for before/after comparisons of one change:
# one orchestrator (SQLite) + 2 worker hosts (5 slots), release build, and
# two loadgen runs of JOBS jobs (50 in flight) printing CPU µs per job of the
# orchestrator and of the workers (from /proc) and jobs/s. Not a test.
#
#   ./scripts/measure-cpu.sh                          # create-and-wait clients
#   FOLLOW=poll ./scripts/measure-cpu.sh              # create, then poll GET /jobs/{id}
#   WFLAGS=--no-task-channel ./scripts/measure-cpu.sh # workers on the HTTP long-poll
#   WARMUP=500 ./scripts/measure-cpu.sh               # 500 uncounted jobs first
#   RUNTIME_THREADS=1 ./scripts/measure-cpu.sh        # one runtime thread per process
#   PLUGINS=/tmp/old-plugins ./scripts/measure-cpu.sh # echo_task.wasm from another build
#   BIN=/tmp/before ./scripts/measure-cpu.sh          # binaries copied from another build
#                                                     # (interleave with BIN unset for A/B)
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS="${JOBS:-6000}"
PORT="${PORT:-18491}"
RUN=.run/measure
mkdir -p "$RUN"
rm -f "$RUN"/bench.db*
BIN="${BIN:-}"
if [ -z "$BIN" ]; then
    cargo build --release -q -p orchestrator -p worker-host -p loadgen
    BIN=./target/release
fi
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
CLIENT_TOKEN=bench-client GLOBAL_WORKER_TOKEN=bench-worker RUST_LOG=warn \
    "$BIN"/orchestrator --listen "127.0.0.1:$PORT" --storage "sqlite:$RUN/bench.db" >"$RUN/orchestrator.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/_public/status" >/dev/null && break; sleep 0.1; done
for i in 1 2; do
    # shellcheck disable=SC2086
    ORCHESTRATOR_URL="http://127.0.0.1:$PORT" WORKER_ID="measure-$i" WORKER_TOKEN=bench-worker RUST_LOG=warn \
        "$BIN"/worker-host --plugins-dir "${PLUGINS:-dist/plugins}" --max-concurrent-tasks 5 ${WFLAGS:-} >"$RUN/worker-$i.log" 2>&1 &
    pids+=($!)
done
sleep 2
for run in 1 2; do
    "$BIN"/loadgen --url "http://127.0.0.1:$PORT" --token bench-client --jobs "$JOBS" --warmup "${WARMUP:-0}" \
        --concurrency 50 --follow "${FOLLOW:-create-wait}" --label "run$run" \
        --orchestrator-pid "${pids[0]}" --worker-pids "${pids[1]},${pids[2]}" | grep -E "CPU per job|rate=" | sed 's/ outcomes.*//'
done
