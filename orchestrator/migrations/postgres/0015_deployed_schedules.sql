-- Schedules deployed through the API (orchestrator/src/schedule/mod.rs)
-- keep their definition in their row; every instance reads it at each tick.
ALTER TABLE schedule_state ADD COLUMN source TEXT;
