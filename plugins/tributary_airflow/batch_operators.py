"""Batch jobs from Airflow tasks: a Spark batch job runs to completion inside its task.

Unlike a streaming job, a batch job lives exactly as long as its task: `SparkBatchHook` spark-submits
it in the foreground and hands every log line to the caller as it comes, so the job's progress
shows in the task log while it runs; `BackfillOperator` decides what to run and fails with the
job's own error.

    BackfillOperator(
        task_id="backfill",
        pipeline="user_events",
        start="2026-11-23T00:00:00Z",
        end="2026-11-24T00:00:00Z",
        targets=["summaries", "anomalies"],
        is_dry_run=True,
    )
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow.sdk import BaseHook, BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from spark_jobs import submit as spark_submit
from spark_jobs.batch.backfill import RESULT_KEY, TARGETS, BackfillRequest
from tributary.airflow_env import tributary_environment
from tributary.catalog import Pipeline, get_pipeline
from tributary.settings import PG_CONN_ID, REPO_ROOT, SPARK_CONN_ID, Settings, load_settings
from tributary_airflow.backends import KubernetesBackend, SparkTarget, application_file, backend_for, redact_argv
from tributary_airflow.hooks import pipeline_pg_url

BACKFILL_SCRIPT = REPO_ROOT / "spark_jobs" / "batch" / "backfill.py"
# How long a stopped task gives its driver to record the run as failed before killing it.
KILL_GRACE_S = 30.0
# Lines of the job's output kept for the error message when it fails without a summary.
TAIL_LINES = 40


class SparkBatchHook(BaseHook):
    """Runs Spark batch jobs where the `tributary_spark` connection says, in the foreground."""

    conn_name_attr = "spark_conn_id"
    default_conn_name = SPARK_CONN_ID
    conn_type = "spark"
    hook_name = "Tributary Spark batch job"

    def __init__(
        self,
        spark_conn_id: str = SPARK_CONN_ID,
        postgres_conn_id: str = PG_CONN_ID,
        settings: Settings | None = None,
        target: SparkTarget | None = None,
    ) -> None:
        super().__init__()
        self.spark_conn_id = spark_conn_id
        self.postgres_conn_id = postgres_conn_id
        self.settings = settings or load_settings()
        self._target = target
        self._process: subprocess.Popen[str] | None = None

    @property
    def target(self) -> SparkTarget:
        if self._target is None:
            self._target = SparkTarget.from_connection(self.get_connection(self.spark_conn_id))
        return self._target

    def submit_argv(self, pipeline: Pipeline, script: Path, name: str, job_args: Sequence[str]) -> list[str]:
        """The spark-submit command of `script`, with everything the deploy mode needs.

        The streaming backends already know each mode's jars, conf and code shipping; the batch
        job swaps in its own script and name. Kubernetes runs the driver in a pod (cluster mode),
        whose log this task could not follow, so it is refused.
        """
        backend = backend_for(self.target)
        if isinstance(backend, KubernetesBackend):
            raise AirflowFailException(
                f"batch jobs run their driver inside the task, which a {self.target.master} master (cluster "
                f"mode) cannot do; point the {self.spark_conn_id} connection at a local[N] or spark:// master"
            )
        argv = backend.submit_argv(pipeline, job_args)
        argv[argv.index(application_file(argv))] = str(script)
        argv[argv.index("--name") + 1] = name
        return argv

    def environment(self) -> dict[str, str]:
        """The driver's environment: Tributary's settings, with the database of the Airflow connection."""
        env = {**tributary_environment(self.settings), "TRIBUTARY_PG_URL": self.pg_url()}
        return spark_submit.job_environment({**os.environ, **env})

    def pg_url(self) -> str:
        return pipeline_pg_url(self.postgres_conn_id, self.settings)

    def run(self, argv: Sequence[str], env: Mapping[str, str], on_line: Callable[[str], None]) -> int:
        """Runs `argv` to its end, calling `on_line` with every line of its output; its exit code."""
        self.log.info("spark-submit: %s", " ".join(redact_argv(argv)))
        # A session of its own: stopping the task stops the driver and its Python workers.
        self._process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=REPO_ROOT,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,
        )
        assert self._process.stdout is not None
        for line in self._process.stdout:
            on_line(line.rstrip("\n"))
        return self._process.wait()

    def kill(self, grace_s: float = KILL_GRACE_S) -> None:
        """SIGTERM to the job's process group (it records its run as failed), SIGKILL after `grace_s`."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


class BackfillOperator(BaseOperator):
    """Recomputes a pipeline's derived data for a time range (`spark_jobs/batch/backfill.py`).

    The request is checked before anything is submitted (a bad range fails the task at once,
    without retries); the job's log lines, progress included, go to the task log; the task's
    XCom is the job's JSON summary (per target: new, changed, unchanged).
    """

    template_fields: Sequence[str] = ("pipeline", "start", "end", "targets", "is_dry_run")

    def __init__(
        self,
        *,
        pipeline: str,
        start: str,
        end: str,
        targets: str | Sequence[str] = TARGETS,
        is_dry_run: bool | str = False,
        rows_per_chunk: int | None = None,
        spark_conn_id: str = SPARK_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.pipeline = pipeline
        self.start = start
        self.end = end
        self.targets = targets
        # Not `dry_run`: BaseOperator has a method of that name.
        self.is_dry_run = is_dry_run
        self.rows_per_chunk = rows_per_chunk
        self.spark_conn_id = spark_conn_id
        self._hook: SparkBatchHook | None = None

    def request(self, requested_by: str | None = None) -> BackfillRequest:
        """The rendered fields as a request; AirflowFailException (no retry) when they are invalid."""
        try:
            request = BackfillRequest.parse(
                self.pipeline, self.start, self.end, self.targets, self.is_dry_run, requested_by
            )
            request.check(get_pipeline(request.pipeline), datetime.now(UTC))
        except ValueError as error:
            raise AirflowFailException(f"backfill refused: {error}") from error
        return request

    def execute(self, context: Any) -> dict[str, Any]:
        run_id = context.get("run_id") if hasattr(context, "get") else None
        request = self.request(f"airflow:{self.dag_id}/{run_id}" if run_id else f"airflow:{self.dag_id}")
        job_args = request.job_args()
        if self.rows_per_chunk:
            job_args += ["--rows-per-chunk", str(self.rows_per_chunk)]
        hook = self._hook = SparkBatchHook(spark_conn_id=self.spark_conn_id)
        pipeline = get_pipeline(request.pipeline)
        argv = hook.submit_argv(pipeline, BACKFILL_SCRIPT, f"tributary-backfill-{pipeline.name}", job_args)

        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        summary: dict[str, Any] = {}

        def on_line(line: str) -> None:
            nonlocal summary
            if line.startswith(f'{{"{RESULT_KEY}": '):
                summary = json.loads(line)
            tail.append(line)
            self.log.info("%s", line)

        code = hook.run(argv, hook.environment(), on_line)
        if code != 0 or summary.get("state") != "succeeded":
            error = summary.get("error") or "\n".join(tail)
            raise AirflowException(f"backfill {request.pipeline} failed (exit code {code}): {error}")
        self.log.info(
            "backfill %s %s: %s rows read, %s rows %s",
            request.pipeline,
            "dry run" if request.dry_run else "done",
            f"{summary['rows_read']:,}",
            f"{summary['written']:,}",
            "would be written" if request.dry_run else "written",
        )
        return summary

    def on_kill(self) -> None:
        if self._hook is not None:
            self._hook.kill()
