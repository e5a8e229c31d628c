-- Jobs, their history, pending webhooks, and deploys (see storage/registry.rs).
CREATE TABLE jobs (
    id          UUID PRIMARY KEY,
    blueprint   TEXT NOT NULL,
    owner       TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    version     BIGINT NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX jobs_owner_created ON jobs (owner, created_at);
CREATE INDEX jobs_status ON jobs (status);
CREATE TABLE job_events (
    seq     BIGSERIAL PRIMARY KEY,
    job_id  UUID NOT NULL,
    at      TIMESTAMPTZ NOT NULL,
    event   TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX job_events_job ON job_events (job_id, seq);
CREATE TABLE webhooks (
    job_id     UUID PRIMARY KEY,
    url        TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE plugin_components (
    sha256 TEXT PRIMARY KEY,
    bytes  BYTEA NOT NULL
);
CREATE TABLE plugin_versions (
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    sha256      TEXT NOT NULL REFERENCES plugin_components (sha256),
    size        BIGINT NOT NULL,
    manifest    TEXT,
    uploaded_at TIMESTAMPTZ NOT NULL,
    uploaded_by TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE plugin_current (
    name    TEXT PRIMARY KEY,
    version INTEGER
);
CREATE TABLE blueprint_versions (
    name       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    text       TEXT NOT NULL,
    origin     TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (name, version)
);
