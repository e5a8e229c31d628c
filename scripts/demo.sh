#!/usr/bin/env bash
# The scenario in one command: build everything, start the orchestrator
# (embedded SQLite storage) and a worker host with the echo plugin, submit
# the scenario's job with curl, print the finished job, stop both.
#
#   ./scripts/demo.sh            # uses port 8080, as the scenario does
#   PORT=9090 ./scripts/demo.sh  # another port
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${PORT:-8080}"
RUN=".run"

./scripts/setup.sh

if curl -s -o /dev/null "http://127.0.0.1:${PORT}/"; then
    echo "error: something already listens on port ${PORT}; stop it or run PORT=<free port> $0" >&2
    exit 1
fi

mkdir -p "$RUN"
rm -f "$RUN"/demo.db*
pids=()
cleanup() {
    # Newest first: the worker says goodbye while the orchestrator still listens.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[$i]}" 2>/dev/null || true
        wait "${pids[$i]}" 2>/dev/null || true
    done
    echo "==> stopped the orchestrator and the worker (logs in $RUN/)"
}
trap cleanup EXIT

echo "==> starting the orchestrator on http://localhost:${PORT} (log: $RUN/orchestrator.log)"
CLIENT_TOKEN=test-client-token GLOBAL_WORKER_TOKEN=test-worker-token \
    ./target/debug/orchestrator --listen "127.0.0.1:${PORT}" --storage "sqlite:$RUN/demo.db" \
    >"$RUN/orchestrator.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:${PORT}/_public/status" >/dev/null && break
    sleep 0.1
done

echo "==> starting the worker host local-test-worker (log: $RUN/worker.log)"
ORCHESTRATOR_URL="http://localhost:${PORT}" WORKER_ID=local-test-worker WORKER_TOKEN=test-worker-token \
    ./target/debug/worker-host --worker-type test-worker --max-concurrent-tasks 5 --plugins-dir dist/plugins \
    >"$RUN/worker.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do
    curl -sf -H "X-Client-Token: test-client-token" "http://127.0.0.1:${PORT}/api/v1/workers" | grep -q local-test-worker && break
    sleep 0.1
done

echo "==> POST /api/v1/jobs/test {\"message\": \"Hello World\", \"multiply\": 3}"
created=$(curl -s -X POST "http://localhost:${PORT}/api/v1/jobs/test" \
    -H "Content-Type: application/json" \
    -H "X-Avtomatika-Token: test-client-token" \
    -d '{"message": "Hello World", "multiply": 3}')
echo "$created"
job_id=$(printf '%s' "$created" | python3 -c 'import json,sys; print(json.load(sys.stdin)["job_id"])')

echo "==> GET /api/v1/jobs/${job_id} (waiting for it to finish)"
job=$(curl -s "http://localhost:${PORT}/api/v1/jobs/${job_id}?wait=30" -H "X-Avtomatika-Token: test-client-token")
printf '%s' "$job" | python3 -m json.tool
printf '%s' "$job" | python3 -c '
import json, sys
job = json.load(sys.stdin)
ok = job["status"] == "finished" and job["result"]["processed_message"] == "Hello World Hello World Hello World"
print("==> the job finished: " + job["result"]["processed_message"] if ok else "==> the job did not finish as expected")
sys.exit(0 if ok else 1)
'
