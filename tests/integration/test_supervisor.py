"""The supervisor's decisions against the real registry, with stand-in driver processes.

The drivers here are plain `sleep` processes started by a backend double, so every rule (restart
of a dead driver, backoff, giving up, stall detection, enforced stop) runs in a second. The real
thing (Airflow + spark-submit + SIGKILL) is in test_supervisor_airflow.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tributary.catalog import USER_EVENTS, Health, Pipeline
from tributary.clients import pg_connect
from tributary.migrations import apply_migrations
from tributary.registry import JobRecord, JobRegistry
from tributary.settings import Settings
from tributary_airflow.backends import JobBackend, SparkTarget, Submission
from tributary_airflow.hooks import StreamingJobHook
from tributary_airflow.supervisor import JobsFailed, StreamingSupervisor

pytestmark = pytest.mark.integration

JOB = USER_EVENTS.job_name


class SleepBackend(JobBackend):
    """Starts `sleep` stand-ins for drivers; SIGTERM is ignored so the stop path must kill."""

    name = "local"

    def __init__(self) -> None:
        super().__init__(SparkTarget.from_master("local[1]"))
        self.children: list[subprocess.Popen[bytes]] = []

    def check_target(self) -> None:
        pass

    def submit_argv(self, pipeline: Pipeline, job_args: Sequence[str] = ()) -> list[str]:
        return [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)",
        ]

    def submit(self, pipeline: Pipeline, job_args: Sequence[str], env: Mapping[str, str], log_dir: Path) -> Submission:
        argv = self.submit_argv(pipeline, job_args)
        child = subprocess.Popen(argv, start_new_session=True)
        self.children.append(child)
        return Submission(
            job_name=pipeline.job_name, deploy_mode=self.name, master="local[1]", argv=tuple(argv), pid=child.pid
        )

    def status(self, submission: Submission) -> str:
        return "running" if self.is_active(submission) else "exited"

    def is_active(self, submission: Submission) -> bool:
        child = next((c for c in self.children if c.pid == submission.pid), None)
        return child is not None and child.poll() is None

    def kill(self, submission: Submission, grace_s: float = 30.0) -> None:
        if submission.pid is not None and self.is_active(submission):
            os.killpg(submission.pid, signal.SIGKILL)
            next(c for c in self.children if c.pid == submission.pid).wait(10)


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def rig(settings: Settings, pg_url: str) -> Iterator[tuple[StreamingSupervisor, SleepBackend, Clock]]:
    apply_migrations(pg_url)
    backend = SleepBackend()
    hook = StreamingJobHook(settings=settings, target=backend.target, pg_url=pg_url, backend=backend, start_check_s=0.2)
    health = Health(max_restarts=2, backoff_initial_s=30, start_grace_s=3600, stop_grace_s=60, healthy_reset_s=900)
    clock = Clock()
    supervisor = StreamingSupervisor(hook, pipelines=[replace(USER_EVENTS, health=health)], now=clock)
    try:
        yield supervisor, backend, clock
    finally:
        for child in backend.children:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait(10)


def record(pg_url: str) -> JobRecord:
    with pg_connect(pg_url) as conn:
        return JobRegistry(conn).get(JOB)


def request_start(pg_url: str) -> None:
    with pg_connect(pg_url) as conn:
        registry = JobRegistry(conn)
        registry.ensure([JOB])
        registry.request_start(JOB, "test")


def kill_driver(pg_url: str) -> None:
    pid = record(pg_url).pid
    assert pid
    os.killpg(pid, signal.SIGKILL)
    time.sleep(0.2)


def test_stopped_job_is_left_alone(rig, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    supervisor, backend, _ = rig
    supervisor.run_once()
    assert record(pg_url).actual_state == "stopped" and not backend.children


def test_dead_driver_is_restarted_at_once_then_with_backoff_then_given_up(rig, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    supervisor, _backend, clock = rig
    request_start(pg_url)
    assert supervisor.run_once().lines == [f"{JOB}: started"]
    first = record(pg_url)
    assert first.actual_state == "starting" and first.pid and first.restarts == 0

    kill_driver(pg_url)
    lines = supervisor.run_once().lines
    assert lines[0].startswith(f"{JOB}: driver gone: the driver (pid {first.pid}) exited unexpectedly")
    assert lines[-1] == f"{JOB}: restarted"  # first failure: no wait
    second = record(pg_url)
    assert second.pid != first.pid and second.restarts == 1 and second.consecutive_failures == 1

    kill_driver(pg_url)
    assert supervisor.run_once().lines[-1] == f"{JOB}: restart backoff: next attempt in 30s"
    assert supervisor.run_once().lines[-1].startswith(f"{JOB}: restart backoff")  # still waiting
    clock.advance(31)
    assert supervisor.run_once().lines[-1] == f"{JOB}: restarted"
    assert record(pg_url).consecutive_failures == 2

    kill_driver(pg_url)
    with pytest.raises(JobsFailed, match=r"user_events: the driver \(pid \d+\) exited unexpectedly"):
        supervisor.run_once()
    failed = record(pg_url)
    assert failed.actual_state == "failed" and failed.consecutive_failures == 3 and failed.pid is None
    # Later passes wait for a person instead of failing every minute.
    clock.advance(3600)
    assert "waiting for a person" in supervisor.run_once().lines[-1]
    with pg_connect(pg_url) as conn:
        actions = [a for _, a, _ in reversed(JobRegistry(conn).actions(JOB))]
    assert actions == ["request_start", "start", "unhealthy", "restart", "unhealthy", "restart", "failed"]

    request_start(pg_url)  # a person fixed it: control DAG action=start
    assert supervisor.run_once().lines[-1] == f"{JOB}: restarted"
    assert record(pg_url).consecutive_failures == 0


def test_job_without_heartbeats_after_its_grace_is_killed_and_restarted(rig, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    supervisor, _, clock = rig
    supervisor.pipelines = [replace(p, health=replace(p.health, start_grace_s=10)) for p in supervisor.pipelines]
    request_start(pg_url)
    supervisor.run_once()
    first = record(pg_url)
    clock.advance(11)
    lines = supervisor.run_once().lines
    assert lines[0] == f"{JOB}: unhealthy, killed: no heartbeat within 10s of the start"
    assert lines[-1] == f"{JOB}: restarted"
    assert record(pg_url).pid != first.pid


def test_stop_is_requested_then_enforced_after_the_grace_period(rig, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    supervisor, backend, clock = rig
    request_start(pg_url)
    supervisor.run_once()
    with pg_connect(pg_url) as conn:
        JobRegistry(conn).request_stop(JOB, "test")
    assert record(pg_url).actual_state == "stopping"
    clock.now = datetime.now(UTC)
    assert supervisor.run_once().lines[-1].startswith(f"{JOB}: stopping (")
    clock.advance(61)
    assert supervisor.run_once().lines[-1] == f"{JOB}: killed: did not stop within the grace period"
    stopped = record(pg_url)
    assert stopped.actual_state == "stopped" and stopped.pid is None
    assert all(c.poll() is not None for c in backend.children)
