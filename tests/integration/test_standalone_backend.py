"""The user_events job submitted through `StandaloneBackend` to a real Spark standalone cluster.

A master and one worker (1 core) run on loopback ports of their own; the driver runs detached
here in client mode, the executor on the worker, importing the job's code from the zip the
backend ships with `--py-files`. A broker and an ES-API server of the test's own keep the
catalog's topic names private to it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.integration.streaming_fixtures import (
    scalar,
    send,
)
from tests.integration.test_user_events_job import prepare
from tributary.airflow_env import tributary_environment
from tributary.catalog import PLATFORM, USER_EVENTS
from tributary.producers.user_events import EventMix, generate_events
from tributary.settings import Settings
from tributary.stack.processes import tail
from tributary.stack.spark_standalone import StandaloneCluster, standalone_cluster
from tributary_airflow.backends import SparkTarget, StandaloneBackend, Submission

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Executors and driver reach each other on loopback only; one small executor fits the worker.
CLUSTER_CONF = {
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.ui.enabled": "false",
    "spark.executor.memory": "512m",
}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[StandaloneCluster]:
    with standalone_cluster(tmp_path / "spark", cores=1, memory="1g") as running:
        yield running


def wait_for(predicate: Callable[[], bool], what: str, submission: Submission, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            log = tail(Path(submission.log_path or ""), 40)
            raise AssertionError(f"no {what} within {timeout_s:.0f}s; driver log tail:\n{log}")
        time.sleep(1.0)


@pytest.mark.timeout(900)
def test_user_events_stream_through_a_standalone_cluster_and_stop_on_kill(
    private_settings: Settings,
    cluster: StandaloneCluster,
    tmp_path: Path,
) -> None:
    settings = private_settings
    prepare(settings, USER_EVENTS, PLATFORM, users=50)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    events = list(
        generate_events(400, seed=31, start=start, events_per_s=20, mix=EventMix(users=50, invalid_share=0.1))
    )
    send(settings, USER_EVENTS.topic.name, events)
    invalid = sum(1 for e in events if e.kind.startswith("invalid:"))
    assert 0 < invalid < len(events)

    def landed() -> tuple[int, int]:
        return (
            int(scalar(settings, "SELECT count(*) FROM user_events")),
            int(scalar(settings, "SELECT count(*) FROM dead_letters")),
        )

    backend = StandaloneBackend(SparkTarget(master=cluster.master_url, conf=CLUSTER_CONF), code_dir=tmp_path / "code")
    # SPARK_LOCAL_IP: the driver's own listeners stay on loopback too.
    env = {**tributary_environment(settings), "SPARK_LOCAL_IP": "127.0.0.1"}
    submission = backend.submit(USER_EVENTS, ["--no-es", "--trigger-interval", "1"], env, tmp_path / "logs")
    assert submission.deploy_mode == "standalone"
    assert submission.pid is not None
    assert backend.status(submission) == "running"

    wait_for(lambda: landed() == (len(events) - invalid, invalid), "complete landing", submission, timeout_s=150)
    assert backend.is_active(submission), "a streaming job keeps running after the data is in"

    started = time.monotonic()
    backend.kill(submission, grace_s=60)
    assert time.monotonic() - started < 45, "the driver stopped on SIGTERM, not on SIGKILL after the grace period"
    assert not backend.is_active(submission)
    assert backend.status(submission) == "exited"
    log = Path(submission.log_path or "").read_text(errors="replace")
    assert "stop requested, stopping queries at a batch boundary" in log
    assert landed() == (len(events) - invalid, invalid)

    # The application ran on the cluster: the master lists it as finished (a clean stop, not a
    # lost driver), and its executor on the worker fetched the code archive the backend built.
    app_id = backend.find_app_id(submission)
    assert app_id is not None, log[-3000:]
    apps = {app["id"]: app for app in cluster.state()["completedapps"]}
    assert apps[app_id]["name"] == "tributary-user_events"
    assert apps[app_id]["state"] == "FINISHED"
    archive = Path(submission.argv[submission.argv.index("--py-files") + 1])
    assert archive.parent == tmp_path / "code"
    assert list((cluster.work_dir / app_id).glob(f"*/{archive.name}")), sorted(cluster.work_dir.rglob("*"))
