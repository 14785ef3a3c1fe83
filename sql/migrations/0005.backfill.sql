-- Backfill: a record of every backfill run (dry runs too), and a BRIN index that lets the
-- backfill's hourly JDBC slices read only their hour of a day partition.
-- depends: 0003.job-supervision

CREATE TABLE backfill_runs (
    id             bigserial   PRIMARY KEY,
    pipeline       text        NOT NULL,
    -- The time range asked for, [range_start, range_end) on event time (UTC).
    range_start    timestamptz NOT NULL,
    range_end      timestamptz NOT NULL CHECK (range_end > range_start),
    targets        text[]      NOT NULL CHECK (cardinality(targets) > 0),
    dry_run        boolean     NOT NULL,
    state          text        NOT NULL DEFAULT 'running'
                               CHECK (state IN ('running', 'succeeded', 'failed')),
    -- Who asked: an Airflow run (dag_id/run_id), the CLI, a test.
    requested_by   text,
    -- Raw rows of the range: found when planning, and read so far (progress).
    rows_planned   bigint      NOT NULL DEFAULT 0,
    rows_read      bigint      NOT NULL DEFAULT 0,
    -- Per target, what was (or in a dry run, would be) written, e.g.
    -- {"summaries": {"new": 12, "changed": 1, "unchanged": 4711}, "alerts": {"new": 0, "already_alerted": 3}}.
    written        jsonb       NOT NULL DEFAULT '{}',
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    error          text
);
CREATE INDEX backfill_runs_pipeline_started_idx ON backfill_runs (pipeline, started_at DESC);

-- Raw rows arrive roughly in event-time order, so a BRIN index on event_ts is tiny, cheap to
-- keep up, and turns a one-hour read of a day partition from a scan of the whole day into a
-- scan of that hour (measured: 135 ms -> 13 ms per hour of a 2M-row day). Created on the
-- partitioned table, it is created on every existing and future day partition.
CREATE INDEX user_events_event_ts_brin ON user_events USING brin (event_ts);
