-- Several orchestrator instances on one database: the queue, the timers,
-- the task leases and the worker registrations live here (see
-- orchestrator/src/engine/shared_db/).
CREATE TABLE task_queue (
    seq       BIGSERIAL PRIMARY KEY,
    job_id    UUID NOT NULL,
    task_id   TEXT NOT NULL,
    task_type TEXT NOT NULL
);
CREATE INDEX task_queue_type ON task_queue (task_type, seq);
CREATE TABLE timers (
    id      BIGSERIAL PRIMARY KEY,
    due_at  TIMESTAMPTZ NOT NULL,
    job_id  UUID NOT NULL,
    kind    TEXT NOT NULL,
    task_id TEXT NOT NULL
);
CREATE INDEX timers_due ON timers (due_at);
CREATE INDEX timers_job ON timers (job_id);
CREATE TABLE task_leases (
    task_id   TEXT PRIMARY KEY,
    job_id    UUID NOT NULL,
    worker_id TEXT NOT NULL,
    since     TIMESTAMPTZ NOT NULL
);
CREATE INDEX task_leases_job ON task_leases (job_id);
CREATE INDEX task_leases_worker ON task_leases (worker_id);
CREATE TABLE workers (
    id        TEXT PRIMARY KEY,
    record    JSONB NOT NULL,
    last_seen TIMESTAMPTZ NOT NULL,
    ttl_ms    BIGINT NOT NULL
);
CREATE TABLE seen_nonces (
    key     TEXT PRIMARY KEY,
    seen_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX seen_nonces_at ON seen_nonces (seen_at);
