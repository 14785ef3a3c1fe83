"""`StreamingJobHook`: start, stop and inspect Tributary's long-running Spark jobs.

The hook talks to two systems: Spark, through the deploy backend the `tributary_spark`
connection selects (local, standalone, Kubernetes), and the job registry in PostgreSQL
(`tributary_postgres`). Operators and the supervisor decide *what* to do; the hook knows *how*.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow.sdk import BaseHook

from spark_jobs.submit import job_script
from tributary.airflow_env import tributary_environment
from tributary.catalog import PIPELINES, Pipeline, get_pipeline
from tributary.clients import kafka_config, pg_connect
from tributary.registry import JobRecord, JobRegistry
from tributary.settings import PG_CONN_ID, SPARK_CONN_ID, Settings, load_settings
from tributary_airflow.backends import JobBackend, SparkTarget, Submission, backend_for

log = logging.getLogger(__name__)

# After a submit, how long the driver must stay up before the start counts as done (a driver
# that cannot even start, e.g. a bad option, dies within seconds).
START_CHECK_S = 5.0


def implemented_pipelines() -> list[Pipeline]:
    """Catalog pipelines whose streaming job exists in this checkout."""
    return [p for p in PIPELINES.values() if job_script(p).exists()]


class StreamingJobHook(BaseHook):
    """Deploys and controls streaming jobs; keeps the registry in step with what it did."""

    conn_name_attr = "spark_conn_id"
    default_conn_name = SPARK_CONN_ID
    conn_type = "spark"
    hook_name = "Tributary streaming job"

    def __init__(
        self,
        spark_conn_id: str = SPARK_CONN_ID,
        postgres_conn_id: str = PG_CONN_ID,
        settings: Settings | None = None,
        target: SparkTarget | None = None,
        pg_url: str | None = None,
        backend: JobBackend | None = None,
        start_check_s: float = START_CHECK_S,
    ) -> None:
        super().__init__()
        self.spark_conn_id = spark_conn_id
        self.postgres_conn_id = postgres_conn_id
        self.settings = settings or load_settings()
        self._target = target
        self._pg_url = pg_url
        self._backend = backend
        self.start_check_s = start_check_s

    # ------------------------------------------------------------------ connections
    @property
    def target(self) -> SparkTarget:
        if self._target is None:
            self._target = SparkTarget.from_connection(self.get_connection(self.spark_conn_id))
        return self._target

    @property
    def backend(self) -> JobBackend:
        return self._backend or backend_for(self.target)

    def pg_url(self) -> str:
        return self._pg_url if self._pg_url is not None else pipeline_pg_url(self.postgres_conn_id, self.settings)

    @contextmanager
    def registry(self) -> Iterator[JobRegistry]:
        with pg_connect(self.pg_url(), application_name="tributary-supervisor") as conn:
            yield JobRegistry(conn)

    # ------------------------------------------------------------------ verbs
    def job_args(self, pipeline: Pipeline) -> list[str]:
        """Command-line arguments of a supervised run: streaming, from the checkpoint."""
        return ["--pipeline", pipeline.name]

    def submit(self, registry: JobRegistry, job: str, *, restart: bool, reason: str) -> Submission:
        """Submits `job` detached and records it; raises if the driver dies right away."""
        pipeline = get_pipeline(job)
        log_dir = self.settings.state_dir / "logs" / "jobs"
        log_dir.mkdir(parents=True, exist_ok=True)
        env = tributary_environment(self.settings)
        submission = self.backend.submit(pipeline, self.job_args(pipeline), env, log_dir)
        registry.record_submitted(job, submission.to_json(), restart=restart, reason=reason)
        log.info("%s: submitted (%s) pid=%s log=%s", job, submission.deploy_mode, submission.pid, submission.log_path)
        deadline = time.monotonic() + self.start_check_s
        while time.monotonic() < deadline:
            if not self.backend.is_active(submission):
                tail = log_tail(submission.log_path)
                error = f"{job}: the driver exited within {self.start_check_s:.0f}s of its start. Log tail:\n{tail}"
                registry.record_exit(job, "failed", error)
                raise RuntimeError(error)
            time.sleep(0.5)
        return submission

    def is_active(self, record: JobRecord) -> bool:
        if not record.submission:
            return False
        return self.backend_of(record).is_active(Submission.from_json(record.submission))

    def backend_of(self, record: JobRecord) -> JobBackend:
        """The backend that started `record` (its master may differ from today's connection)."""
        assert record.submission is not None
        submission = Submission.from_json(record.submission)
        if self._backend is not None or submission.master == self.target.master:
            return self.backend
        return backend_for(SparkTarget.from_master(submission.master))

    def kill(self, registry: JobRegistry, record: JobRecord, *, grace_s: float, reason: str) -> None:
        if record.submission:
            self.backend_of(record).kill(Submission.from_json(record.submission), grace_s=grace_s)
        registry.log(record.job_name, "kill", reason)

    def start(self, job: str, reason: str) -> Submission | None:
        """Desired 'running', and submitted now unless its driver is already there."""
        with self.registry() as registry:
            registry.ensure([job])
            registry.request_start(job, reason)
            record = registry.get(job)
            if self.is_active(record):
                log.info("%s: already running (pid %s); nothing to start", job, record.pid)
                return None
            if record.submission:
                registry.record_exit(job, "stopped")
            return self.submit(registry, job, restart=False, reason=reason)

    def stop(self, job: str, reason: str, grace_s: float | None = None) -> str:
        """Desired 'stopped'; waits for the job to stop its queries, kills it after the grace period."""
        grace = float(get_pipeline(job).health.stop_grace_s if grace_s is None else grace_s)
        with self.registry() as registry:
            registry.ensure([job])
            registry.request_stop(job, reason)
            record = registry.get(job)
            if not self.is_active(record):
                if record.submission:
                    registry.record_exit(job, "stopped")
                return "already stopped"
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and self.is_active(record):
                time.sleep(1.0)
            if self.is_active(record):
                self.kill(registry, record, grace_s=10.0, reason=f"still running {grace:.0f}s after the stop request")
                outcome = "killed after the grace period"
            else:
                outcome = "stopped cleanly"
            registry.record_exit(job, "stopped")
            registry.log(job, "stop", f"{reason}: {outcome}")
            return outcome

    def status(self, job: str) -> dict[str, Any]:
        with self.registry() as registry:
            registry.ensure([job])
            record = registry.get(job)
            driver = "none"
            if record.submission:
                driver = self.backend_of(record).status(Submission.from_json(record.submission))
        return {
            "job": job,
            "desired_state": record.desired_state,
            "actual_state": record.actual_state,
            "driver": driver,
            "pid": record.pid,
            "app_id": record.app_id,
            "restarts": record.restarts,
            "last_error": record.last_error,
        }

    def log_ends(self, pipeline: Pipeline) -> dict[tuple[str, int], int]:
        """End offset of each partition of the pipeline's topic, as the job's own source sees it."""
        from tributary.kafka_log import KafkaLog

        with KafkaLog(kafka_config(self.settings), client_id="tributary-supervisor", timeout_s=10) as reader:
            bounds = reader.topic_bounds(pipeline.topic.name)
        return {(pipeline.topic.name, partition): b.end for partition, b in bounds.items()}


def pipeline_pg_url(postgres_conn_id: str, settings: Settings) -> str:
    """The pipeline database: the Airflow connection `postgres_conn_id`, else TRIBUTARY_PG_URL."""
    try:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        return str(PostgresHook(postgres_conn_id=postgres_conn_id).get_uri())
    except Exception as error:  # noqa: BLE001 - outside Airflow (CLI, tests) the settings decide
        log.debug("no Airflow connection %s (%s); using TRIBUTARY_PG_URL", postgres_conn_id, error)
        return settings.pg_url


def log_tail(path: str | None, lines: int = 30) -> str:
    if not path:
        return "(no log)"
    try:
        with Path(path).open("rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 64_000))
            text = fh.read().decode("utf-8", "replace")
    except OSError as error:
        return f"(log {path} unreadable: {error})"
    return "\n".join(text.splitlines()[-lines:])


def utcnow() -> datetime:
    return datetime.now(UTC)
