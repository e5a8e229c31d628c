-- Clients' usage per month, for their quotas (orchestrator/src/api/limits.rs):
-- each instance adds what it counted about once a second and reads back the
-- totals. One row per client, kind (`attempts`, `jobs`) and month.
CREATE TABLE client_usage (
    owner  TEXT NOT NULL,
    kind   TEXT NOT NULL,
    period TEXT NOT NULL,
    used   BIGINT NOT NULL,
    PRIMARY KEY (owner, kind, period)
);
