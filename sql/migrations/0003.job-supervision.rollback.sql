DROP TABLE streaming_job_actions;
ALTER TABLE streaming_jobs
    DROP COLUMN stop_requested_at,
    DROP COLUMN healthy_since,
    DROP COLUMN lag_samples,
    DROP COLUMN last_lag,
    DROP COLUMN submission;
