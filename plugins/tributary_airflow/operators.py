"""Operators over `StreamingJobHook`: start, stop, report on and supervise streaming jobs.

None of them holds a worker slot for a job's lifetime: a start submits a detached driver and
returns once it is up; the supervisor DAG looks after it from then on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from tributary.catalog import get_pipeline
from tributary.settings import SPARK_CONN_ID

ACTIONS = ("start", "stop", "restart")


def _validated_job(job: str) -> str:
    get_pipeline(job)  # raises with the catalog's names
    return job


class StartStreamingJobOperator(BaseOperator):
    """Sets the job's desired state to running and submits it unless it is already up."""

    template_fields: Sequence[str] = ("job",)

    def __init__(self, *, job: str, spark_conn_id: str = SPARK_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.job = job
        self.spark_conn_id = spark_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from tributary_airflow.hooks import StreamingJobHook

        hook = StreamingJobHook(spark_conn_id=self.spark_conn_id)
        submission = hook.start(_validated_job(self.job), reason=f"start by {self.task_id}")
        self.log.info("%s: %s", self.job, "submitted" if submission else "already running")
        return hook.status(self.job)


class StopStreamingJobOperator(BaseOperator):
    """Sets the desired state to stopped, waits for a clean stop, kills after `grace_s`."""

    template_fields: Sequence[str] = ("job",)

    def __init__(
        self, *, job: str, grace_s: float | None = None, spark_conn_id: str = SPARK_CONN_ID, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.job = job
        self.grace_s = grace_s
        self.spark_conn_id = spark_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from tributary_airflow.hooks import StreamingJobHook

        hook = StreamingJobHook(spark_conn_id=self.spark_conn_id)
        outcome = hook.stop(_validated_job(self.job), reason=f"stop by {self.task_id}", grace_s=self.grace_s)
        self.log.info("%s: %s", self.job, outcome)
        return hook.status(self.job)


class StreamingJobStatusOperator(BaseOperator):
    """Pushes the job's registry row and driver state as the task's XCom."""

    template_fields: Sequence[str] = ("job",)

    def __init__(self, *, job: str, spark_conn_id: str = SPARK_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.job = job
        self.spark_conn_id = spark_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from tributary_airflow.hooks import StreamingJobHook

        status = StreamingJobHook(spark_conn_id=self.spark_conn_id).status(_validated_job(self.job))
        self.log.info("%s", status)
        return status


class StreamingJobControlOperator(BaseOperator):
    """start | stop | restart one job (the control DAG's single task)."""

    template_fields: Sequence[str] = ("job", "action")

    def __init__(self, *, job: str, action: str, spark_conn_id: str = SPARK_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.job = job
        self.action = action
        self.spark_conn_id = spark_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from tributary_airflow.hooks import StreamingJobHook

        if self.action not in ACTIONS:
            raise ValueError(f"action {self.action!r} is not one of {', '.join(ACTIONS)}")
        job = _validated_job(self.job)
        hook = StreamingJobHook(spark_conn_id=self.spark_conn_id)
        reason = f"{self.action} from {self.dag_id}"
        if self.action in ("stop", "restart"):
            self.log.info("%s: %s", job, hook.stop(job, reason=reason))
        if self.action in ("start", "restart"):
            hook.start(job, reason=reason)
        return hook.status(job)


class SuperviseStreamingJobsOperator(BaseOperator):
    """One supervisor pass over every implemented catalog job; fails when a job gave up."""

    def __init__(self, *, spark_conn_id: str = SPARK_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spark_conn_id = spark_conn_id

    def execute(self, context: Any) -> list[str]:
        from tributary_airflow.hooks import StreamingJobHook
        from tributary_airflow.supervisor import StreamingSupervisor

        report = StreamingSupervisor(StreamingJobHook(spark_conn_id=self.spark_conn_id)).run_once()
        return report.lines
