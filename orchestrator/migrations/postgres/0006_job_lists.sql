-- One index per filter of the job list (owner; owner + status; owner +
-- blueprint), each in the list's order, so a page reads only its rows and a
-- cursor (`?after=`) starts where the last page ended. Each of the last two
-- also holds the other filter's column, for lists filtered by both.
CREATE INDEX jobs_owner_created_id ON jobs (owner, created_at, id);
CREATE INDEX jobs_owner_status_created ON jobs (owner, status, created_at, id, blueprint);
CREATE INDEX jobs_owner_blueprint_created ON jobs (owner, blueprint, created_at, id, status);
DROP INDEX IF EXISTS jobs_owner_created;
-- Jobs that have not ended are found by `jobs_active_owner` (0004); the
-- index of every job's status is not needed. Retention finds ended jobs by
-- the time they last changed.
DROP INDEX IF EXISTS jobs_status;
CREATE INDEX jobs_ended_updated ON jobs (updated_at)
    WHERE status IN ('finished', 'failed', 'cancelled');
