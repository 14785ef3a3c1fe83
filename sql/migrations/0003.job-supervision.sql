-- Streaming-job supervision: what the supervisor needs beyond the registry of 0001, and a log of
-- every action it takes.
-- depends: 0001.platform

ALTER TABLE streaming_jobs
    -- When a stop was asked for; the job is killed if it has not stopped within the grace period.
    ADD COLUMN stop_requested_at timestamptz,
    -- Since when the job has been running without a restart (resets consecutive_failures).
    ADD COLUMN healthy_since     timestamptz,
    -- Consumer lag (records) at the last supervisor checks, oldest first, a few entries.
    ADD COLUMN lag_samples       jsonb       NOT NULL DEFAULT '[]',
    ADD COLUMN last_lag          bigint,
    -- Backend details of the running submission (master, driver pod, log path, argv).
    ADD COLUMN submission        jsonb;

CREATE TABLE streaming_job_actions (
    id          bigserial   PRIMARY KEY,
    job_name    text        NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    action      text        NOT NULL,  -- start | restart | stop | kill | backoff | failed | healthy | mark
    reason      text,
    detail      jsonb
);
CREATE INDEX streaming_job_actions_job_at_idx ON streaming_job_actions (job_name, at DESC);
