# Shared by the benchmark scripts (sourced): the processes they start, and
# waiting for them.

# Pids of the processes started; stop_all stops them (on exit too).
pids=()
stop_all() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
}
trap stop_all EXIT

# Waits (up to 30 s, looking every 10 ms) until the URL answers 2xx.
wait_http() {
    for _ in $(seq 1 3000); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.01; done
    echo "timeout waiting for $1" >&2
    return 1
}

# Waits (up to 30 s) until the orchestrator at $1 (default
# http://127.0.0.1:$PORT) lists at least two workers.
wait_workers() {
    local url=${1:-http://127.0.0.1:${PORT}}
    for _ in $(seq 1 300); do
        n=$(curl -s -H "X-Client-Token: bench-client" "$url/api/v1/workers" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo 0)
        [ "$n" -ge 2 ] && return 0
        sleep 0.1
    done
    echo "workers did not register" >&2
    return 1
}
