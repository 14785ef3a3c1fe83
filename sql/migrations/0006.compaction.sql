-- Compaction reports: one row per run of the compaction job (spark_jobs/batch/compact.py), which
-- archives old raw day partitions to the data lake, expires Elasticsearch indices and published
-- outbox rows. The Airflow UI's "Compaction reports" page lists these rows.
-- depends: 0002.user-events

CREATE TABLE compaction_reports (
    id           bigserial   PRIMARY KEY,
    -- Airflow run id of the DAG run, or `manual__<time>` for a run from the command line.
    run_id       text        NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    -- `running` until the job ends; a row left `running` means the driver died mid-way.
    state        text        NOT NULL DEFAULT 'running'
                             CHECK (state IN ('running', 'succeeded', 'failed')),
    dry_run      boolean     NOT NULL DEFAULT false,
    -- The whole report (tributary.compaction_report.CompactionReport.to_json()); the page renders
    -- its HTML from this, so it works wherever the driver ran.
    report       jsonb,
    -- One line for lists and logs, e.g. "2 partitions archived (1,204 rows, 3.1 MB reclaimed), ...".
    summary      text,
    -- Where the driver also saved the report as files (JSON, and HTML that opens from disk).
    json_path    text,
    html_path    text
);
CREATE INDEX compaction_reports_run_idx ON compaction_reports (run_id, id DESC);
CREATE INDEX compaction_reports_started_idx ON compaction_reports (started_at DESC);
