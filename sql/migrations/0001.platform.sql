-- Platform tables shared by every pipeline: dead letters, the outbox for outgoing Kafka
-- messages, the streaming job registry and the per-batch heartbeats written by each job.
-- depends:

CREATE TABLE dead_letters (
    topic            text        NOT NULL,
    kafka_partition  integer     NOT NULL,
    kafka_offset     bigint      NOT NULL,
    pipeline         text        NOT NULL,
    kafka_timestamp  timestamptz,
    payload          bytea,
    -- Names of every validation rule the record failed, e.g. {user_id_positive,ip_valid}.
    reasons          text[]      NOT NULL CHECK (cardinality(reasons) > 0),
    detail           text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, kafka_partition, kafka_offset)
);
CREATE INDEX dead_letters_pipeline_created_idx ON dead_letters (pipeline, created_at);

-- Messages bound for Kafka are written here in the same transaction as the rows that cause
-- them, then published and marked; `dedup_key` makes a replayed batch a no-op.
CREATE TABLE outbox (
    id            bigserial   PRIMARY KEY,
    dedup_key     text        NOT NULL UNIQUE,
    topic         text        NOT NULL,
    message_key   text        NOT NULL,
    payload       jsonb       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz,
    attempts      integer     NOT NULL DEFAULT 0,
    last_error    text
);
CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;

CREATE TABLE streaming_jobs (
    job_name              text        PRIMARY KEY,
    desired_state         text        NOT NULL DEFAULT 'stopped'
                                      CHECK (desired_state IN ('running', 'stopped')),
    actual_state          text        NOT NULL DEFAULT 'stopped'
                                      CHECK (actual_state IN ('starting', 'running', 'stopping', 'stopped', 'failed')),
    deploy_mode           text,
    app_id                text,
    pid                   integer,
    log_path              text,
    started_at            timestamptz,
    stopped_at            timestamptz,
    restarts              integer     NOT NULL DEFAULT 0,
    consecutive_failures  integer     NOT NULL DEFAULT 0,
    next_restart_at       timestamptz,
    last_error            text,
    updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE job_heartbeats (
    job_name              text        NOT NULL,
    query_name            text        NOT NULL,
    batch_id              bigint      NOT NULL,
    recorded_at           timestamptz NOT NULL DEFAULT now(),
    input_rows            bigint      NOT NULL,
    input_rows_per_s      double precision,
    processed_rows_per_s  double precision,
    durations_ms          jsonb,
    end_offsets           jsonb,
    watermark             timestamptz,
    violations            jsonb,
    PRIMARY KEY (job_name, query_name, batch_id)
);
CREATE INDEX job_heartbeats_latest_idx ON job_heartbeats (job_name, recorded_at DESC);

-- Raw tables are range-partitioned by event day; writers call this before inserting rows of a
-- day, so a day's partition exists before its first row (no default partition to untangle).
CREATE FUNCTION ensure_day_partition(parent regclass, day date) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    part text := format('%s_%s', parent::text, to_char(day, 'YYYYMMDD'));
BEGIN
    IF to_regclass(part) IS NOT NULL THEN
        RETURN part;
    END IF;
    EXECUTE format(
        'CREATE TABLE IF NOT EXISTS %I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
        part, parent, day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
    RETURN part;
EXCEPTION
    -- Two writers creating the same day at once: IF NOT EXISTS does not cover the race, the
    -- loser sees one of these once the winner commits; the partition exists either way.
    WHEN duplicate_table OR unique_violation THEN
        RETURN part;
END
$$;
