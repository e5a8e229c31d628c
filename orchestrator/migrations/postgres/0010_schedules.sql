-- Schedules' progress, shared by every instance: a slot is claimed by a
-- compare-and-set of last_slot, so each slot starts one job.
CREATE TABLE schedule_state (
    name      TEXT PRIMARY KEY,
    last_slot TIMESTAMPTZ NOT NULL,
    last_job  UUID,
    paused    BOOLEAN NOT NULL DEFAULT false,
    pending   BOOLEAN NOT NULL DEFAULT false
);
