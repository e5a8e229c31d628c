#!/usr/bin/env bash
# Side-by-side benchmark on this machine, in one invocation, same harness:
#   1. our orchestrator (SQLite) + 2 worker hosts with echo_task (work_ms=0)
#   2. the same, the client following jobs with `?wait=` instead of polling,
#      and creating with `?wait=` (one request per job)
#   3. our orchestrator (PostgreSQL, one instance, then two sharing the
#      database) + 2 worker hosts, when PostgreSQL is reachable
#      (BENCH_POSTGRES_URL, default the machine's); their CPU per job counts
#      the PostgreSQL server's processes too, and a shorter run through
#      tools/pgcount (COUNT_JOBS jobs, row `ours-postgres-counted`) counts the
#      statements the orchestrator sends per job
#   4. our orchestrator (in-memory) + 2 worker hosts
#   5. the real avtomatika 1.0b30 orchestrator + 2 avtomatika-worker 1.0b20 echo workers,
#      its jobs in memory (avtomatika-memory), then the same with its SQLite
#      history database (HISTORY_DATABASE_URI=sqlite:…, avtomatika-sqlite)
# Each of our rows is compared with the avtomatika row of the same storage
# (ours-sqlite* with avtomatika-sqlite, the others with avtomatika-memory).
# Same N jobs, same C in flight, same number of workers (5 task slots each),
# the same client polling GET /jobs/{id} for both systems (backoff 0.5 → 20 ms).
# Each run reports jobs/s, latency percentiles and CPU µs per job of the
# orchestrator and of the workers (from /proc), HTTP requests per job made
# by the client (the create and its GETs), and the pickup latency of an
# idle queue (one job at a time: created → dispatched). Prints one table;
# each run's own report (every round) is in .run/bench/results.txt.
# Our worker hosts take tasks over the task channel (WebSocket); the row
# `ours-sqlite-http` runs them with --no-task-channel (HTTP long-poll, as
# before the channel existed); `ours-sqlite-keyed` runs the same flow with a
# priority and a concurrency key on its task (tools/loadgen/keyed_flow.toml). ROWS="ours-sqlite avtomatika" runs only the
# rows whose label starts with one of those words. Not part of the tests.
#
# Every run is preceded, in the same stream of jobs, by WARMUP jobs that are
# not counted (the servers' first burst is not what is measured).
#
# REPEAT=3 runs every row three times, the rows in turn (round 1: every
# row, then round 2…), and reports for each row the median of each figure
# (ratios from those medians): on a shared 2-core machine a row measured a
# few minutes after another can meet a machine 10–20 % slower.
#
# ORCHESTRATOR_BIN=<path> runs our rows with another build of the
# orchestrator (the same worker hosts and client), to compare two builds.
#
# THREADS=1 (the default here) runs each of our processes on one async
# runtime thread (RUNTIME_THREADS): the load generator, the orchestrator and
# two workers share 2 cores, and a runtime thread per core in each process
# costs ~15 % more CPU per job in wake-ups and context switches (each
# avtomatika process is one Python thread too). THREADS=default leaves our
# processes at one runtime thread per core.
#
#   JOBS=4000 WARMUP=500 CONCURRENCY=50 REPEAT=1 THREADS=1 ./scripts/bench-compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS="${JOBS:-4000}"
WARMUP="${WARMUP:-500}"
CONCURRENCY="${CONCURRENCY:-50}"
REPEAT="${REPEAT:-1}"
THREADS="${THREADS:-1}"
if [ "$THREADS" = default ]; then unset RUNTIME_THREADS; else export RUNTIME_THREADS="$THREADS"; fi
PORT="${PORT:-18480}"
RUN=".run/bench"
mkdir -p "$RUN"
rm -f "$RUN"/*.log "$RUN"/*.db* "$RUN"/results.txt "$RUN"/results.jsonl "$RUN"/pickup.jsonl

./scripts/setup.sh
./scripts/compat-venvs.sh
if [ -e target/compat/SKIPPED ]; then echo "PyPI unreachable: cannot run avtomatika" >&2; exit 1; fi
echo "==> our processes run with RUNTIME_THREADS=${RUNTIME_THREADS:-one per core}"
echo "==> building release binaries (orchestrator, worker-host, loadgen)"
cargo build --release -p orchestrator -p worker-host -p loadgen -p pgcount

. scripts/bench-lib.sh

PICKUP_JOBS="${PICKUP_JOBS:-200}"
# Another build of our orchestrator to measure (e.g. the one before a change).
ORCHESTRATOR_BIN="${ORCHESTRATOR_BIN:-./target/release/orchestrator}"
COUNT_JOBS="${COUNT_JOBS:-1000}"

# loadgen over the processes started last: the orchestrator, then the workers.
# Further arguments go to the measured run (e.g. --database-cpu).
measure() {
    local label=$1 follow=$2
    shift 2
    local workers
    workers=$(IFS=,; echo "${pids[*]:1}")
    ./target/release/loadgen --url "http://127.0.0.1:${PORT}" --token bench-client --jobs "$JOBS" --warmup "$WARMUP" \
        --concurrency "$CONCURRENCY" --follow "$follow" --label "$label" --json "$@" \
        --orchestrator-pid "${pids[0]}" --worker-pids "$workers" | tee -a "$RUN/results.txt" | grep '^{' >>"$RUN/results.jsonl"
    ./target/release/loadgen --url "http://127.0.0.1:${PORT}" --token bench-client --jobs "$PICKUP_JOBS" \
        --concurrency 1 --follow "$follow" --label "$label-idle" --pickup --json | tee -a "$RUN/results.txt" | grep '^{' >>"$RUN/pickup.jsonl"
}

# Whether the row `label` is selected by ROWS (all rows when ROWS is empty).
wanted() {
    [ -z "${ROWS:-}" ] && return 0
    for w in $ROWS; do [ "$1" = "$w" ] || [ "$1" = "$w-counted" ] || [[ "$1" == "$w"-* && "$w" == avtomatika ]] && return 0; done
    return 1
}

run_ours() {
    local label=$1 storage=$2 follow=${3:-poll} channel=${4:-}
    shift $(( $# < 4 ? $# : 4 ))
    wanted "$label" || return 0
    echo "==> $label"
    # shellcheck disable=SC2086 # ORCH_ARGS: more arguments, split on spaces
    CLIENT_TOKEN=bench-client GLOBAL_WORKER_TOKEN=bench-worker RUST_LOG=warn \
        "$ORCHESTRATOR_BIN" --listen "127.0.0.1:${PORT}" --storage "$storage" ${ORCH_ARGS:-} >"$RUN/$label-orchestrator.log" 2>&1 &
    pids+=($!)
    wait_http "http://127.0.0.1:${PORT}/_public/status"
    for i in 1 2; do
        ORCHESTRATOR_URL="http://127.0.0.1:${PORT}" WORKER_ID="bench-wasm-$i" WORKER_TOKEN=bench-worker RUST_LOG=warn \
            ./target/release/worker-host --plugins-dir dist/plugins --max-concurrent-tasks 5 $channel >"$RUN/$label-worker-$i.log" 2>&1 &
        pids+=($!)
    done
    wait_workers
    measure "$label" "$follow" "$@"
    ps -o rss= -p "${pids[0]}" | awk '{printf "    orchestrator RSS after the run: %.1f MiB\n", $1/1024}'
    stop_all
}

# The real avtomatika with MemoryStorage; `history` = a HISTORY_DATABASE_URI
# (e.g. sqlite:…), its durable record of every job event, or empty for none.
run_avtomatika() {
    local label=$1 history=${2:-}
    wanted "$label" || return 0
    echo "==> $label"
    HISTORY_DATABASE_URI="$history" \
    API_HOST=127.0.0.1 API_PORT="$PORT" CLIENT_TOKEN=bench-client GLOBAL_WORKER_TOKEN=bench-worker \
        LOG_FORMAT=text LOG_LEVEL=WARNING RATE_LIMITING_ENABLED=false \
        target/compat/venv-orchestrator/bin/python tests/compat/avtomatika_orchestrator.py >"$RUN/$label-orchestrator.log" 2>&1 &
    pids+=($!)
    wait_http "http://127.0.0.1:${PORT}/_public/status"
    for i in 1 2; do
        ORCHESTRATOR_URL="http://127.0.0.1:${PORT}" WORKER_ID="bench-py-$i" WORKER_TOKEN=bench-worker LOG_LEVEL=WARNING \
            target/compat/venv-worker/bin/python tests/compat/python_worker.py >"$RUN/$label-worker-$i.log" 2>&1 &
        pids+=($!)
    done
    wait_workers
    measure "$label" poll
    stop_all
}

run_ours_two() {
    local label=$1 storage=$2
    local port2=$((PORT + 1))
    wanted "$label" || return 0
    echo "==> $label"
    for p in "$PORT" "$port2"; do
        CLIENT_TOKEN=bench-client GLOBAL_WORKER_TOKEN=bench-worker RUST_LOG=warn \
            "$ORCHESTRATOR_BIN" --listen "127.0.0.1:$p" --storage "$storage" >"$RUN/$label-orchestrator-$p.log" 2>&1 &
        pids+=($!)
        wait_http "http://127.0.0.1:$p/_public/status"
    done
    local urls="http://127.0.0.1:${PORT},http://127.0.0.1:${port2}"
    for i in 1 2; do
        ORCHESTRATOR_URL="$urls" WORKER_ID="bench-wasm-$i" WORKER_TOKEN=bench-worker RUST_LOG=warn \
            ./target/release/worker-host --plugins-dir dist/plugins --max-concurrent-tasks 5 >"$RUN/$label-worker-$i.log" 2>&1 &
        pids+=($!)
    done
    wait_workers
    ./target/release/loadgen --url "$urls" --token bench-client --jobs "$JOBS" --warmup "$WARMUP" \
        --concurrency "$CONCURRENCY" --follow poll --label "$label" --json --database-cpu \
        --orchestrator-pid "${pids[0]},${pids[1]}" --worker-pids "${pids[2]},${pids[3]}" | tee -a "$RUN/results.txt" | grep '^{' >>"$RUN/results.jsonl"
    ./target/release/loadgen --url "$urls" --token bench-client --jobs "$PICKUP_JOBS" \
        --concurrency 1 --follow poll --label "$label-idle" --pickup --json | tee -a "$RUN/results.txt" | grep '^{' >>"$RUN/pickup.jsonl"
    stop_all
}

# Statements per job: the same row, COUNT_JOBS jobs, the orchestrator
# connected through tools/pgcount (a proxy that counts the protocol's
# Execute and Query messages); its other figures carry the proxy's cost.
count_statements() {
    local server=$1 db=$2 port=$((PORT + 7))
    wanted ours-postgres || return 0
    rm -f "$RUN/pgcount.json"
    ./target/release/pgcount --listen "127.0.0.1:$port" --upstream "${server##*@}" --report "$RUN/pgcount.json" \
        >"$RUN/pgcount.log" 2>&1 &
    local proxy=$!
    # Stopped on the way out too, should the run fail.
    trap "kill -TERM $proxy 2>/dev/null || true; stop_all" EXIT
    # Listening once it has written its first report.
    for _ in $(seq 1 500); do [ -e "$RUN/pgcount.json" ] && break; sleep 0.01; done
    JOBS=$COUNT_JOBS run_ours "ours-postgres-counted" "${server%@*}@127.0.0.1:$port/$db" poll "" \
        --statements-file "$RUN/pgcount.json"
    kill -TERM "$proxy" 2>/dev/null || true
    wait "$proxy" 2>/dev/null || true
    trap stop_all EXIT
}

# Every row once, in order; REPEAT rounds of it (so a drift of the machine
# hits every row alike), and the table reports each row's median.
all_rows() {
    run_ours "ours-sqlite-http" "sqlite:$RUN/bench.db" poll --no-task-channel
    rm -f "$RUN"/bench.db*
    run_ours "ours-sqlite" "sqlite:$RUN/bench.db"
    rm -f "$RUN"/bench.db*
    run_ours "ours-sqlite-wait" "sqlite:$RUN/bench.db" wait
    rm -f "$RUN"/bench.db*
    run_ours "ours-sqlite-create-wait" "sqlite:$RUN/bench.db" create-wait
    rm -f "$RUN"/bench.db*
    # The same flow with a priority and a concurrency key on its task.
    mkdir -p "$RUN/keyed-blueprints"
    cp blueprints/test_flow.toml tools/loadgen/keyed_flow.toml "$RUN/keyed-blueprints/"
    ORCH_ARGS="--blueprints-dir $RUN/keyed-blueprints" \
        run_ours "ours-sqlite-keyed" "sqlite:$RUN/bench.db" poll "" --endpoint /api/v1/jobs/keyed
    PG_ADMIN="${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
    PG_DB="bench_$$"
    if { wanted ours-postgres || wanted ours-postgres-x2; } && command -v psql >/dev/null && psql "$PG_ADMIN" -qc "CREATE DATABASE $PG_DB" 2>/dev/null; then
        run_ours "ours-postgres" "${PG_ADMIN%/*}/$PG_DB" poll "" --database-cpu
        count_statements "${PG_ADMIN%/*}" "$PG_DB"
        psql "$PG_ADMIN" -qc "DROP DATABASE $PG_DB WITH (FORCE)" || true
        psql "$PG_ADMIN" -qc "CREATE DATABASE $PG_DB"
        run_ours_two "ours-postgres-x2" "${PG_ADMIN%/*}/$PG_DB"
        psql "$PG_ADMIN" -qc "DROP DATABASE $PG_DB WITH (FORCE)" || true
    elif wanted ours-postgres || wanted ours-postgres-x2; then
        echo "==> skipping PostgreSQL (psql missing or $PG_ADMIN unreachable)"
    fi
    run_ours "ours-memory" "memory"
    run_avtomatika "avtomatika-memory"
    rm -f "$RUN"/avtomatika-history.db*
    run_avtomatika "avtomatika-sqlite" "sqlite://$PWD/$RUN/avtomatika-history.db"
}
for round in $(seq 1 "$REPEAT"); do
    if [ "$REPEAT" -gt 1 ]; then echo "==> round $round of $REPEAT"; fi
    all_rows
done

python3 - "$RUN/results.jsonl" "$RUN/pickup.jsonl" <<'PY'
import json, sys
from statistics import median, median_low
def medians(runs):
    """One row per label: the median of each figure over its runs."""
    by = {}
    for r in runs:
        by.setdefault(r["label"], []).append(r)
    out = []
    for label, rs in by.items():
        m = dict(rs[0])
        for k, v in rs[0].items():
            vals = [r.get(k) for r in rs]
            if isinstance(v, (int, float)) and not isinstance(v, bool) and all(isinstance(x, (int, float)) for x in vals):
                m[k] = median_low(vals) if all(isinstance(x, int) for x in vals) else median(vals)
        m["runs"] = len(rs)
        out.append(m)
    return out
rows = medians([json.loads(l) for l in open(sys.argv[1])])
pickups = {r["label"][:-len("-idle")]: r for r in medians(map(json.loads, open(sys.argv[2])))}
avt = {r["label"]: r for r in rows if r["label"].startswith("avtomatika")}
def base_of(r):
    """The avtomatika row a row is compared with: the same storage, else memory."""
    kind = "sqlite" if "sqlite" in r["label"] else "memory"
    return avt.get(f"avtomatika-{kind}") or avt.get("avtomatika-memory") or next(iter(avt.values()), None)
def cpu(r):
    """Orchestrator, workers, PostgreSQL server (rows that count it), total."""
    o, w, d = r.get("cpu_us_orchestrator"), r.get("cpu_us_workers"), r.get("cpu_us_database")
    if o is None or w is None:
        return (None, None, d, None)
    return (o, w, d, o + w + (d or 0))
fmt = lambda v: "-" if v is None else f"{v:,.0f}"
print()
n = max((r["runs"] for r in rows), default=1)
if n > 1:
    print(f"Median of {n} runs of each row, the rows in turn.")
    print()
print("| run | jobs | in flight | finished | jobs/s | p50 ms | p95 ms | p99 ms | requests/job | statements/job | CPU µs/job orchestrator | workers | PostgreSQL | total | load generator | idle pickup p50 / p99 ms | compared with | jobs/s vs it | CPU/job vs it |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    o, w, d, t = cpu(r)
    base = base_of(r)
    bt = cpu(base)[3] if base else None
    ratio = f'{r["jobs_per_s"] / base["jobs_per_s"]:.1f}x' if base and base["jobs_per_s"] else "-"
    cpu_ratio = f'1/{bt / t:.1f}' if t and bt else "-"
    p = pickups.get(r["label"], {})
    pick = f'{p["pickup_p50_ms"]:.2f} / {p["pickup_p99_ms"]:.2f}' if p.get("pickup_p50_ms") is not None else "-"
    req = f'{r["requests_per_job"]:.2f}' if r.get("requests_per_job") is not None else "-"
    stmts = f'{r["statements_per_job"]:.1f}' if r.get("statements_per_job") is not None else "-"
    print(f'| {r["label"]} | {r["jobs"]} | {r["concurrency"]} | {r["finished"]} | {r["jobs_per_s"]:.1f} | '
          f'{r["p50_ms"]:.1f} | {r["p95_ms"]:.1f} | {r["p99_ms"]:.1f} | {req} | {stmts} | {fmt(o)} | {fmt(w)} | {fmt(d)} | {fmt(t)} | {fmt(r.get("cpu_us_client"))} | {pick} | '
          f'{base["label"] if base else "-"} | {ratio} | {cpu_ratio} |')
PY
