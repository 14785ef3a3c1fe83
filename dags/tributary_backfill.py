"""
### Tributary backfill

Recompute what a pipeline derives from its raw table for an event-time range, with the streaming
job's own transformations: after an outage of the streaming job, to fold in events that arrived
too late for their windows, or after a fix to the raw data. Every write is idempotent, so a rerun
changes nothing. Trigger it with:

- **pipeline**: a catalog pipeline that has a backfill (`user_events`, `weather`);
- **start** / **end**: the range `[start, end)` of event time, ISO 8601 with a zone
  (`2026-11-23T00:00:00Z`); it must end at least the pipeline's `reconcile_delay_hours` ago
  (the streaming job may still write newer windows) and start within its hot retention;
  for `weather`, on whole hours (its summaries are hourly windows);
- **targets**: for `user_events`, any of `summaries` (windowed activity, upserted where it
  differs), `anomalies` (upserted likewise), `es` (documents missing from Elasticsearch, same ids
  as streaming) and `alerts` (only for anomalies that were never recorded or alerted before);
  for `weather`, `summaries` only: the hourly summaries recomputed from every reading, late ones
  included, and the late readings of the range marked folded;
- **dry_run**: report per target what would be new or changed, and write nothing.

Every window that overlaps the range is recomputed. The task runs the Spark job to its end and
streams its log: progress lines (`backfill user_events: read 120,000 rows (40% of 300,000) ...`)
show it advancing. Its XCom is the job's summary; every run is recorded in `backfill_runs`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag

from spark_jobs.batch.backfill import INSTANT_PATTERN, TARGETS, backfill_pipelines
from tributary_airflow.batch_operators import BackfillOperator


@dag(
    dag_id="tributary_backfill",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["tributary", "batch"],
    doc_md=__doc__,
    # Params arrive as their types (a list of targets, a boolean), not as their text.
    render_template_as_native_obj=True,
    default_args={"owner": "data-platform", "retries": 1, "retry_delay": timedelta(minutes=1)},
    params={
        "pipeline": Param(
            "user_events",
            type="string",
            enum=backfill_pipelines(),
            title="Pipeline",
            description="The catalog pipeline to backfill.",
        ),
        "start": Param(
            type="string",
            format="date-time",
            pattern=INSTANT_PATTERN,
            title="Start",
            description="Start of the event-time range (inclusive), e.g. 2026-11-23T00:00:00Z.",
        ),
        "end": Param(
            type="string",
            format="date-time",
            pattern=INSTANT_PATTERN,
            title="End",
            description="End of the event-time range (exclusive); at least the pipeline's reconcile delay ago.",
        ),
        "targets": Param(
            list(TARGETS),
            type="array",
            items={"type": "string", "enum": list(TARGETS)},
            minItems=1,
            uniqueItems=True,
            title="Targets",
            description=(
                "What to recompute: summaries, anomalies, es (documents), alerts (new anomalies only); "
                "weather backfills summaries only."
            ),
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Report what would be new or changed per target, and write nothing.",
        ),
    },
)
def tributary_backfill() -> None:
    BackfillOperator(
        task_id="backfill",
        pipeline="{{ params.pipeline }}",
        start="{{ params.start }}",
        end="{{ params.end }}",
        targets="{{ params.targets }}",
        is_dry_run="{{ params.dry_run }}",
    )


tributary_backfill()
