-- History entries name the task attempt they are about (JSON of job::TaskRef).
ALTER TABLE job_events ADD COLUMN task TEXT;
