"""
### Tributary reconciliation

Every hour, checks that what landed agrees with its sources, for each closed hour (older than the
catalog's `batch.reconcile_delay_hours` plus the window watermark) not checked yet:

- **kafka_raw**: per topic partition, every offset the job committed is exactly one raw row or one
  dead letter (gaps and surplus listed as offset ranges);
- **raw_es**: documents per hour in Elasticsearch versus raw rows (missing ids listed): user_events
  and app_logs; weather indexes nothing and is skipped with that reason;
- **raw_summaries**: windows recomputed from raw versus the summary table: user_events with the
  streaming code in Spark; weather per station and hour in SQL (unfolded late readings left out,
  sums within 1e-9); app_logs minute statistics with the job's own SQL statement.

Each pipeline and hour is one row of `reconciliation_runs` with its results in
`reconciliation_results`. A mismatch fails this DAG run with a readable summary and, where the
catalog allows (`batch.auto_backfill`) and the pipeline's backfill has the target, triggers
`tributary_backfill` for exactly the affected range (target `summaries` or `es`; weather:
`summaries` of whole hours). app_logs has no backfill: its summary says how to fix (the minute
statistics: `python -m spark_jobs.batch.reconcile --pipeline app_logs --start ... --end ...
--recompute-summaries`). Kafka gaps cannot be rebuilt from raw: they are reported.

Trigger by hand with **pipeline** (`all` or one catalog pipeline) and optionally an hour range
**start** / **end** (ISO date-times, UTC; rounded out to whole hours; hours not closed yet are left out).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, dag

from tributary.catalog import PIPELINES
from tributary_airflow.reconcile_operators import (
    BACKFILL_DAG_ID,
    PlanBackfillOperator,
    ReconcileOperator,
    ReconciliationVerdictOperator,
)


@dag(
    dag_id="tributary_reconciliation",
    schedule=timedelta(hours=1),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=2),
    tags=["tributary", "batch"],
    doc_md=__doc__,
    default_args={"owner": "data-platform", "retries": 1, "retry_delay": timedelta(minutes=2)},
    params={
        "pipeline": Param(
            "all",
            type="string",
            enum=["all", *sorted(PIPELINES)],
            title="Pipeline",
            description="A catalog pipeline, or all pipelines whose streaming job exists.",
        ),
        "start": Param(
            None,
            type=["null", "string"],
            format="date-time",
            title="Start",
            description="First hour to check (UTC). Leave empty for the hours not checked yet.",
        ),
        "end": Param(
            None,
            type=["null", "string"],
            format="date-time",
            title="End",
            description="End of the range, exclusive (UTC). Give it together with start.",
        ),
    },
)
def tributary_reconciliation() -> None:
    reconcile = ReconcileOperator(
        task_id="reconcile",
        pipeline="{{ params.pipeline }}",
        start="{{ params.start or '' }}",
        end="{{ params.end or '' }}",
        execution_timeout=timedelta(hours=1),
    )
    plan = PlanBackfillOperator(task_id="plan_backfill")
    # One mapped instance per backfill (none when everything agrees); the run id is deterministic,
    # so a retry finds the run it already started instead of starting a second one.
    trigger = TriggerDagRunOperator.partial(
        task_id="trigger_backfill",
        trigger_dag_id=BACKFILL_DAG_ID,
        logical_date=None,
        skip_when_already_exists=True,
    ).expand_kwargs(plan.output)
    verdict = ReconciliationVerdictOperator(task_id="verdict", reconcile_task_id="reconcile")
    reconcile >> plan >> trigger >> verdict


tributary_reconciliation()
