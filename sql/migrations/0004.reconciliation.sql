-- Reconciliation: one run per pipeline and closed hour, and what each check compared.
-- depends: 0003.job-supervision

CREATE TABLE reconciliation_runs (
    id                  bigserial   PRIMARY KEY,
    pipeline            text        NOT NULL,
    hour_start          timestamptz NOT NULL,
    hour_end            timestamptz NOT NULL CHECK (hour_end > hour_start),
    started_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    -- running until the checks finish: passed (all agree), failed (a mismatch), error (a check
    -- could not run; the summary says why).
    state               text        NOT NULL DEFAULT 'running'
                                    CHECK (state IN ('running', 'passed', 'failed', 'error')),
    summary             text,
    -- Who asked: the Airflow DAG run ("airflow:<dag_id>/<run_id>") or "cli".
    requested_by        text        NOT NULL DEFAULT 'cli',
    backfill_triggered  boolean     NOT NULL DEFAULT false,
    -- The tributary_backfill DAG run(s) started for this run's mismatches.
    backfill_run_ids    text[]      NOT NULL DEFAULT '{}'
);
CREATE INDEX reconciliation_runs_pipeline_hour_idx ON reconciliation_runs (pipeline, hour_start DESC);
CREATE INDEX reconciliation_runs_requested_by_idx ON reconciliation_runs (requested_by);

CREATE TABLE reconciliation_results (
    run_id      bigint      NOT NULL REFERENCES reconciliation_runs (id) ON DELETE CASCADE,
    check_name  text        NOT NULL CHECK (check_name IN ('kafka_raw', 'raw_es', 'raw_summaries')),
    -- What was compared: a topic partition ("user_events/2"), an hour, a window size ("60s/5s").
    scope       text        NOT NULL,
    outcome     text        NOT NULL CHECK (outcome IN ('ok', 'mismatch', 'skipped')),
    expected    bigint,
    actual      bigint,
    -- Offset ranges of gaps and surplus, missing ids, differing windows, ... (see tributary/reconciliation.py).
    detail      jsonb       NOT NULL DEFAULT '{}',
    PRIMARY KEY (run_id, check_name, scope)
);

-- The Kafka <-> raw check selects an hour of source positions by broker timestamp, which is not
-- the partition key: late events land in old day partitions. Rows arrive in broker-timestamp
-- order within each day partition, so a BRIN index (a few pages per partition, nearly free to
-- keep up on insert) lets the check read only that hour's blocks of each partition instead of
-- scanning them all. (Reads by event time use the BRIN index of 0005.backfill.)
CREATE INDEX user_events_kafka_timestamp_brin ON user_events USING brin (kafka_timestamp);
CREATE INDEX dead_letters_topic_kafka_timestamp_idx ON dead_letters (topic, kafka_timestamp);
