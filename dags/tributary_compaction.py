"""
### Tributary compaction

Daily housekeeping of the stored data, with a report of everything it did:

1. **compact** (spark-submit of `spark_jobs/batch/compact.py` on the `tributary_spark` connection):
   every raw day partition older than its pipeline's hot retention (`batch.hot_retention_days`
   in the catalog) is exported to Parquet in the data lake (`TRIBUTARY_LAKE_URI`), verified
   (row counts and checksums of the Parquet files against PostgreSQL), then detached and dropped;
   the raw tables are vacuumed and analysed; daily Elasticsearch indices past their family's
   retention are deleted, and published outbox rows past `outbox_retention_days`.
   **A failed verification keeps the partition and fails the run.** Reruns are no-ops.
2. **report**: logs the run's report and its link; fails when the run did.

Each run leaves a report (rows before/after, bytes reclaimed, files written, duplicates,
verification, duration per table and day, with charts) in the `compaction_reports` table,
listed in the Airflow UI under **Compaction reports**.

Param **dry_run**: measure and report only; nothing is exported, dropped or deleted.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Param, dag, task

from spark_jobs.session import POSTGRES_JDBC_JAR
from tributary.compaction import COMPACT_JOB, compact_job_environment
from tributary.settings import SPARK_CONN_ID

JDBC_JAR = str(POSTGRES_JDBC_JAR) if POSTGRES_JDBC_JAR.exists() else None


@dag(
    dag_id="tributary_compaction",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["tributary", "batch"],
    doc_md=__doc__,
    default_args={"owner": "data-platform", "retries": 1, "retry_delay": timedelta(minutes=5)},
    params={
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Only measure what would be archived, dropped and deleted; change nothing.",
        ),
    },
)
def tributary_compaction() -> None:
    compact = SparkSubmitOperator(
        task_id="compact",
        conn_id=SPARK_CONN_ID,
        application=str(COMPACT_JOB),
        name="tributary-compaction",
        application_args=["--run-id", "{{ run_id }}", "--dry-run={{ params.dry_run | lower }}"],
        # The driver reads PostgreSQL over JDBC: the driver must be on its class path at JVM start.
        jars=JDBC_JAR,
        driver_class_path=JDBC_JAR,
        env_vars=compact_job_environment(),
    )

    # Runs after a failed `compact` too, so the log says what failed and where the report is.
    @task(trigger_rule="all_done")
    def report() -> str:
        from airflow.providers.postgres.hooks.postgres import PostgresHook
        from airflow.sdk import get_current_context
        from airflow.sdk.exceptions import AirflowFailException

        from tributary.compaction_report import run_outcome
        from tributary.settings import PG_CONN_ID, load_settings

        pg_url = PostgresHook(postgres_conn_id=PG_CONN_ID).get_uri()
        outcome = run_outcome(pg_url, str(get_current_context()["run_id"]), load_settings().airflow_url)
        print(outcome.message)
        if not outcome.ok:
            raise AirflowFailException(outcome.message)  # no retry: the next run tries again
        return outcome.message

    compact >> report()


tributary_compaction()
