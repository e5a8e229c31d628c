-- Jobs that have not ended, per owner: `max_active_jobs_per_client` is
-- checked on every create, in time proportional to that client's active jobs.
CREATE INDEX jobs_active_owner ON jobs (owner)
    WHERE status NOT IN ('finished', 'failed', 'quarantined', 'cancelled');
