"""The supervisor DAG for real: Airflow runs it, it spark-submits user_events, a SIGKILLed driver
is back within the next supervisor run, and every produced event lands exactly once."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.integration.streaming_fixtures import (
    scalar,
    send,
)
from tests.integration.test_user_events_job import prepare
from tributary.airflow_env import airflow_environment
from tributary.catalog import PLATFORM, USER_EVENTS
from tributary.clients import es_client, pg_connect
from tributary.producers.user_events import EventMix, generate_events
from tributary.registry import JobRecord, JobRegistry
from tributary.settings import Settings
from tributary.stack.postgres import ensure_database

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AIRFLOW = str(Path(sys.executable).parent / "airflow")
JOB = USER_EVENTS.job_name


def airflow(args: list[str], env: dict[str, str], timeout: int = 300) -> str:
    result = subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"airflow {' '.join(args)} failed ({result.returncode}):\n{output[-4000:]}"
    return output


def job(settings: Settings) -> JobRecord:
    with pg_connect(settings.pg_url) as conn:
        return JobRegistry(conn).get(JOB)


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, settings: Settings) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1.0)
    record = job(settings)
    tail = Path(record.log_path).read_text(errors="replace")[-3000:] if record.log_path else "(no log)"
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}; registry: {record}\nlog tail:\n{tail}")


@pytest.mark.timeout(900)
def test_supervisor_dag_starts_the_job_and_restarts_a_killed_driver_exactly_once(
    private_settings: Settings,
) -> None:
    settings = private_settings
    prepare(settings, USER_EVENTS, PLATFORM, users=200)
    ensure_database(settings.airflow_db_url)
    env = airflow_environment(settings)
    airflow(["db", "migrate"], env, timeout=240)
    with pg_connect(settings.pg_url) as conn:
        registry = JobRegistry(conn)
        registry.ensure([JOB])
        registry.request_start(JOB, "test")

    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
    mix = EventMix(users=200, invalid_share=0.05)
    events = list(generate_events(4_000, seed=31, start=start, events_per_s=200, mix=mix))
    first, second = events[:2_000], events[2_000:]
    valid = sum(1 for e in events if not e.kind.startswith("invalid:"))

    def raw_rows() -> int:
        return int(scalar(settings, "SELECT count(*) FROM user_events"))

    send(settings, USER_EVENTS.topic.name, first)
    try:
        out = airflow(["dags", "test", "tributary_streaming_supervisor"], env)
        assert f"{JOB}: started" in out, out[-3000:]
        first_valid = sum(1 for e in first if not e.kind.startswith("invalid:"))
        wait_for(lambda: raw_rows() == first_valid, 240, f"{first_valid} raw rows", settings)
        wait_for(lambda: job(settings).actual_state == "running", 30, "the job to report running", settings)
        killed = job(settings)
        assert killed.pid is not None
        os.killpg(killed.pid, signal.SIGKILL)  # the driver and its Python workers

        send(settings, USER_EVENTS.topic.name, second)
        out = airflow(["dags", "test", "tributary_streaming_supervisor"], env)
        assert f"{JOB}: driver gone" in out and f"{JOB}: restarted" in out, out[-3000:]
        restarted = job(settings)
        assert restarted.pid not in (None, killed.pid) and restarted.restarts == 1

        wait_for(lambda: raw_rows() == valid, 240, f"{valid} raw rows after the restart", settings)
        assert (
            scalar(
                settings,
                "SELECT count(*) FROM (SELECT DISTINCT topic, kafka_partition, kafka_offset FROM user_events) d",
            )
            == valid
        )
        assert scalar(settings, "SELECT count(*) FROM dead_letters") == len(events) - valid
        es = es_client(settings)
        index = USER_EVENTS.indices["events"].pattern
        wait_for(
            lambda: es.indices.refresh(index=index) is not None and es.count(index=index)["count"] == valid,
            60,
            f"{valid} documents in Elasticsearch",
            settings,
        )
        out = airflow(["dags", "test", "tributary_streaming_supervisor"], env)
        assert f"{JOB}: healthy" in out, out[-3000:]
    finally:
        with pg_connect(settings.pg_url) as conn:
            record = JobRegistry(conn).get(JOB)
        if record.pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(record.pid, signal.SIGKILL)
