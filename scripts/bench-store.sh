#!/usr/bin/env bash
# The job store at a million jobs (docs/benchmarks.md, "At a million jobs"):
#   1. one real echo job through the orchestrator, then `storebench fill`
#      copies it (body and history) into JOBS finished jobs in the SQLite file
#   2. bytes per job on disk; the orchestrator's start on the full file
#   3. `storebench reads`: the job list's first and deep pages with each
#      filter, an old job by id, the dashboard's jobs page
#   4. the echo flow (loadgen, 2 worker hosts) quiet, then while LISTERS
#      clients list jobs in a loop (for LISTER_SECONDS; their rate is printed)
# Release builds; not part of the tests.
#
#   JOBS=1000000 FLOW_JOBS=20000 LISTERS=10 ./scripts/bench-store.sh
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS="${JOBS:-1000000}"
FLOW_JOBS="${FLOW_JOBS:-20000}"
LISTERS="${LISTERS:-10}"
# How long the listers run: longer than the flow beside them.
LISTER_SECONDS="${LISTER_SECONDS:-20}"
PORT="${PORT:-18490}"
RUN=".run/bench-store"
DB="$RUN/store.db"
mkdir -p "$RUN"
rm -f "$RUN"/*.log "$DB"*
export RUNTIME_THREADS="${RUNTIME_THREADS:-1}"

./scripts/setup.sh
echo "==> building release binaries (orchestrator, worker-host, loadgen, storebench)"
cargo build --release -p orchestrator -p worker-host -p loadgen -p storebench

. scripts/bench-lib.sh
URL="http://127.0.0.1:${PORT}"
start_orchestrator() {
    CLIENT_TOKEN=bench-client GLOBAL_WORKER_TOKEN=bench-worker FINISHED_JOB_RETENTION=0 RUST_LOG=warn \
        ./target/release/orchestrator --listen "127.0.0.1:${PORT}" --storage "sqlite:$DB" >>"$RUN/orchestrator.log" 2>&1 &
    pids+=($!)
}
start_workers() {
    for i in 1 2; do
        ORCHESTRATOR_URL="$URL" WORKER_ID="store-wasm-$i" WORKER_TOKEN=bench-worker RUST_LOG=warn \
            ./target/release/worker-host --plugins-dir dist/plugins --max-concurrent-tasks 5 >"$RUN/worker-$i.log" 2>&1 &
        pids+=($!)
    done
    wait_workers "$URL"
}

echo "==> one real echo job"
start_orchestrator
wait_http "$URL/_public/status"
start_workers
curl -sf -X POST "$URL/api/v1/jobs/test?wait=30" -H "X-Client-Token: bench-client" \
    -d '{"message": "Hello World", "multiply": 3}' >/dev/null
stop_all

echo "==> filling the store with $JOBS jobs"
./target/release/storebench fill --db "$DB" --jobs "$JOBS"
bytes=$(du -cb "$DB"* | tail -1 | cut -f1)
python3 -c "print(f'    {$bytes / 1e6:.0f} MB on disk, {$bytes / $JOBS:.0f} bytes per job')"

echo "==> start on the full store"
t0=$(date +%s.%N)
start_orchestrator
wait_http "$URL/_public/status"
python3 -c "print(f'    answering after {$(date +%s.%N) - $t0:.2f} s')"

echo "==> reads"
./target/release/storebench reads --url "$URL" --token bench-client --jobs "$JOBS"

echo "==> the echo flow, quiet"
start_workers
flow() {
    ./target/release/loadgen --url "$URL" --token bench-client --jobs "$FLOW_JOBS" --warmup 1000 \
        --concurrency 50 --follow poll | grep -E "jobs/s|p50|p99" || true
}
flow
echo "==> the echo flow while $LISTERS clients list jobs in a loop"
./target/release/storebench listers --url "$URL" --token bench-client --clients "$LISTERS" --seconds "$LISTER_SECONDS" &
listers=$!
sleep 1
flow
wait "$listers"
ps -o rss= -p "${pids[0]}" | awk '{printf "    orchestrator RSS after the runs: %.1f MiB\n", $1/1024}'
