"""Reconciliation in Airflow: run the Spark batch job, plan the backfills, give the verdict.

`ReconcileOperator` spark-submits `spark_jobs/batch/reconcile.py` and waits for it. It runs as a
separate process rather than a SparkSession inside the task: the JVM and its Python workers then
never live in the Airflow worker (under `airflow dags test` every task runs in one process), the
job is submitted the way the streaming jobs are (master and conf from the `tributary_spark`
connection), and a stuck job can be killed as one process group. The job stores one row per
pipeline and hour in `reconciliation_runs`, tagged with the DAG run (`requested_by`), which is how
the tasks after it find its results: in the database, not in XCom.

`PlanBackfillOperator` turns the mismatches of those runs into `tributary_backfill` runs (one per
target and merged range) for pipelines whose catalog entry allows it (`batch.auto_backfill`) and
whose backfill has the target (`BACKFILLS`: weather has only summaries, app_logs none; a mismatch
without a backfill is logged with the fix its run stored), returned as `TriggerDagRunOperator`
kwargs for dynamic mapping; `ReconciliationVerdictOperator` records which backfills exist and
fails the DAG run on any mismatch, with the readable summary.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from spark_jobs import submit as spark_submit
from spark_jobs.batch.backfill import BACKFILLS
from spark_jobs.session import POSTGRES_JDBC_JAR
from tributary.catalog import get_pipeline
from tributary.clients import pg_connect
from tributary.reconciliation import (
    KAFKA_RAW,
    BackfillRequest,
    CheckResult,
    ReconciliationStore,
    StoredRun,
    backfill_requests,
    requested_by_airflow,
)
from tributary.settings import REPO_ROOT, SPARK_CONN_ID
from tributary_airflow.backends import KubernetesBackend, StandaloneBackend, backend_for
from tributary_airflow.batch_operators import SparkBatchHook

BACKFILL_DAG_ID = "tributary_backfill"
RECONCILE_SCRIPT = REPO_ROOT / "spark_jobs" / "batch" / "reconcile.py"
# Exit statuses of the reconcile job that mean "finished; the runs say how it went".
FINISHED_EXIT_CODES = {0: "all agree", 1: "mismatches found", 3: "a check could not run"}


class ReconcileJobHook(SparkBatchHook):
    """The batch hook (connections, environment, kill) building the argv without a pipeline, since
    one reconcile job covers every pipeline, and keeping the tail of the output for the error."""

    def batch_argv(self, name: str, script: str, args: Sequence[str]) -> list[str]:
        """spark-submit command line of a batch script, driver in client mode on this machine."""
        backend = backend_for(self.target)  # checks the connection, with the fix in the error
        if isinstance(backend, KubernetesBackend):
            raise ValueError(
                f"batch jobs run their driver on the Airflow worker and wait for it; the {self.spark_conn_id} "
                f"connection points at Kubernetes ({self.target.master}), where Tributary only runs streaming "
                "drivers. Run batch jobs against a local[*] or spark://host:port master (a second Spark "
                "connection, passed as spark_conn_id)"
            )
        conf = backend.conf() if isinstance(backend, StandaloneBackend) else dict(self.target.conf)
        argv = [spark_submit.SPARK_SUBMIT, "--master", self.target.master, "--deploy-mode", "client", "--name", name]
        if POSTGRES_JDBC_JAR.exists():
            # On the driver's class path from JVM start, as for the streaming jobs (spark_jobs/submit.py).
            argv += ["--jars", str(POSTGRES_JDBC_JAR), "--driver-class-path", str(POSTGRES_JDBC_JAR)]
        for key, value in conf.items():
            argv += ["--conf", f"{key}={value}"]
        return [*argv, script, *args]

    def run_to_end(self, argv: Sequence[str], tail_lines: int = 60) -> tuple[int, str]:
        """Runs `argv` to the end, its output going to the task log; (exit status, output tail)."""
        tail: collections.deque[str] = collections.deque(maxlen=tail_lines)

        def on_line(line: str) -> None:
            tail.append(line)
            self.log.info("%s", line)

        try:
            return self.run(argv, self.environment(), on_line), "\n".join(tail)
        finally:
            self.kill()


def _optional_time(name: str, text: str | None) -> str | None:
    """`text` if it is an ISO date-time (empty: None); raises with the expected form otherwise."""
    if text is None or not text.strip() or text.strip() == "None":
        return None
    try:
        datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{name}={text!r} is not an ISO date-time such as 2026-11-23T10:00:00+00:00") from None
    return text.strip()


def _requested_by(operator: BaseOperator, context: Any) -> str:
    return requested_by_airflow(operator.dag_id, context["run_id"])


def _stored_runs(hook: SparkBatchHook, requested_by: str) -> list[StoredRun]:
    with pg_connect(hook.pg_url(), autocommit=True, application_name="tributary-reconciliation") as conn:
        return ReconciliationStore(conn).runs_requested_by(requested_by)


def backfillable(run: StoredRun) -> list[CheckResult]:
    """The run's results, less backfill ranges of targets its pipeline's backfill lacks (the
    backfill DAG would refuse them; the reconcile job leaves them out already, and says how to
    fix those by hand)."""
    backfill = BACKFILLS.get(run.pipeline)
    targets = backfill.targets if backfill is not None else ()
    return [r if r.backfill is None or r.backfill.target in targets else replace(r, backfill=None) for r in run.results]


def planned_backfills(runs: Sequence[StoredRun]) -> list[BackfillRequest]:
    """Backfills for the failed runs of pipelines whose catalog entry allows automatic backfills,
    of the targets their backfill has."""
    eligible = [r for r in runs if r.state == "failed" and get_pipeline(r.pipeline).batch.auto_backfill]
    return backfill_requests((r.id, r.pipeline, backfillable(r)) for r in eligible)


class ReconcileOperator(BaseOperator):
    """Spark-submits the reconcile job for `pipeline` ("all" or a catalog name) and an optional
    [start, end) range, and waits; fails only when the job itself fails, not on mismatches."""

    template_fields: Sequence[str] = ("pipeline", "start", "end")

    def __init__(
        self,
        *,
        pipeline: str = "all",
        start: str | None = None,
        end: str | None = None,
        spark_conn_id: str = SPARK_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.pipeline = pipeline
        self.start = start
        self.end = end
        self.spark_conn_id = spark_conn_id
        self._hook: ReconcileJobHook | None = None

    def job_args(self, requested_by: str) -> list[str]:
        """Arguments of the reconcile job; refuses a half-given or malformed range before submitting."""
        if self.pipeline != "all":
            get_pipeline(self.pipeline)  # raises with the catalog's names
        start, end = _optional_time("start", self.start), _optional_time("end", self.end)
        if (start is None) != (end is None):
            raise ValueError(
                f"give both start and end (ISO date-times) or neither; got start={start!r} end={end!r}. "
                "Without a range the hours not checked yet are checked."
            )
        args = ["--pipeline", self.pipeline, "--requested-by", requested_by]
        return args + (["--start", start, "--end", end] if start and end else [])

    def execute(self, context: Any) -> dict[str, Any]:
        requested_by = _requested_by(self, context)
        self._hook = hook = ReconcileJobHook(spark_conn_id=self.spark_conn_id)
        argv = hook.batch_argv("tributary-reconciliation", str(RECONCILE_SCRIPT), self.job_args(requested_by))
        status, tail = hook.run_to_end(argv)
        if status not in FINISHED_EXIT_CODES:
            raise RuntimeError(
                f"the reconcile job exited with status {status} without finishing its runs; its output ends:\n{tail}"
            )
        runs = _stored_runs(hook, requested_by)
        self.log.info("reconcile job: %s; %s hour(s) stored", FINISHED_EXIT_CODES[status], len(runs))
        return {
            "requested_by": requested_by,
            "exit_status": status,
            "runs": [
                {"id": r.id, "pipeline": r.pipeline, "hour_start": r.hour_start.isoformat(), "state": r.state}
                for r in runs
            ],
        }

    def on_kill(self) -> None:
        if self._hook is not None:
            self._hook.kill()


class PlanBackfillOperator(BaseOperator):
    """The `tributary_backfill` runs this DAG run's mismatches need, as TriggerDagRunOperator kwargs
    (`trigger_run_id`, `conf`); an empty list when nothing can or may be backfilled."""

    def execute(self, context: Any) -> list[dict[str, Any]]:
        runs = _stored_runs(ReconcileJobHook(), _requested_by(self, context))
        skipped = [r for r in runs if r.state == "failed" and not get_pipeline(r.pipeline).batch.auto_backfill]
        for run in skipped:
            self.log.info("%s: auto_backfill is off in the catalog; run %s is left for a person", run.pipeline, run.id)
        for run in runs:
            for result in run.results:
                if result.mismatch and result.backfill is None and result.check != KAFKA_RAW:
                    self.log.info(
                        "%s run %s: %s %s has no backfill; %s",
                        run.pipeline,
                        run.id,
                        result.check,
                        result.scope,
                        result.fix or "see the run's summary",
                    )
        requests = planned_backfills(runs)
        for request in requests:
            self.log.info(
                "backfill %s: %s %s..%s for runs %s",
                request.dag_run_id,
                request.target,
                request.start.isoformat(),
                request.end.isoformat(),
                list(request.run_ids),
            )
        return [{"trigger_run_id": r.dag_run_id, "conf": r.conf()} for r in requests]


class ReconciliationVerdictOperator(BaseOperator):
    """Records the backfills that were triggered and fails on any mismatch or error, with the
    runs' summaries; runs whatever happened upstream (trigger_rule all_done)."""

    def __init__(self, *, reconcile_task_id: str = "reconcile", backfill_dag_id: str = BACKFILL_DAG_ID, **kwargs: Any):
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        self.reconcile_task_id = reconcile_task_id
        self.backfill_dag_id = backfill_dag_id

    def execute(self, context: Any) -> str:
        ti = context["ti"]
        if ti.xcom_pull(task_ids=self.reconcile_task_id) is None:
            raise AirflowFailException(
                f"task {self.reconcile_task_id} did not finish, so nothing was reconciled; see its log"
            )
        hook = ReconcileJobHook()
        requested_by = _requested_by(self, context)
        runs = _stored_runs(hook, requested_by)
        lines = [r.summary or f"{r.pipeline} {r.hour_start.isoformat()}: {r.state}" for r in runs]
        with pg_connect(hook.pg_url(), autocommit=True, application_name="tributary-reconciliation") as conn:
            store = ReconciliationStore(conn)
            for request in planned_backfills(runs):
                triggered = ti.get_dr_count(dag_id=self.backfill_dag_id, run_ids=[request.dag_run_id]) > 0
                if triggered:
                    store.mark_backfill(request.run_ids, request.dag_run_id)
                lines.append(
                    f"backfill {request.target} {request.start.isoformat()}..{request.end.isoformat()}: "
                    + (
                        f"triggered ({self.backfill_dag_id} run {request.dag_run_id})"
                        if triggered
                        else "NOT triggered (see the trigger_backfill task's log)"
                    )
                )
        if not runs:
            lines.append(f"nothing to reconcile at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: no closed hour left")
        for line in lines:
            self.log.info("%s", line)
        bad = [r for r in runs if r.state in ("failed", "error")]
        if bad:
            raise AirflowFailException(
                f"reconciliation found problems in {len(bad)} of {len(runs)} hours:\n" + "\n".join(lines)
            )
        return "\n".join(lines)
