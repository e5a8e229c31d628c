-- Dashboard sign-ins, shared by every instance: a session signed out on one
-- instance is refused by all. `id` and `token` are SHA-256 digests (of the
-- cookie's session id and of the client token it was opened with), so the
-- table holds nothing that signs anyone in.
CREATE TABLE dashboard_sessions (
    id bytea PRIMARY KEY,
    client text NOT NULL,
    token bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX dashboard_sessions_client ON dashboard_sessions (client, created_at);
CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions (expires_at);
