"""Shared by the streaming job tests: private services, and drivers started as production does."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from spark_jobs.submit import job_environment, submit_argv
from tributary.catalog import PLATFORM, Pipeline, PlatformNames
from tributary.clients import es_client, kafka_admin, kafka_config, pg_connect
from tributary.migrations import apply_migrations
from tributary.producers.user_events import GeneratedEvent, produce
from tributary.provisioning import ensure_index_templates, ensure_topics
from tributary.settings import Settings
from tributary.stack.broker import KafkaBroker
from tributary.stack.ports import free_port
from tributary.stack.search import OsmemSearch


@pytest.fixture
def private_settings(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """`settings` with a broker and an ES-API server of this test's own (catalog names, no sharing)."""
    own = replace(
        settings,
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        kafka_controller_port=free_port(),
        embedded_kafka=True,
        es_url=f"http://127.0.0.1:{free_port()}",
        embedded_es=True,
        state_dir=tmp_path / "services",
    )
    broker, search = KafkaBroker(own, progress=None), OsmemSearch(own, progress=None)
    broker.up()
    search.up()
    monkeypatch.setenv("TRIBUTARY_KAFKA_BOOTSTRAP", own.kafka_bootstrap)
    monkeypatch.setenv("TRIBUTARY_ES_URL", own.es_url)
    try:
        yield replace(own, state_dir=settings.state_dir)
    finally:
        search.down()
        broker.down()


def start_driver(pipeline: Pipeline, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """spark-submit of `pipeline`'s job in a session of its own (as the supervisor starts it)."""
    argv = submit_argv(pipeline, master="local[2]", job_args=args, conf={"spark.ui.enabled": "false"})
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, env=job_environment(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_for(
    predicate: Callable[[], bool], timeout_s: float, what: str, log: Path, driver: subprocess.Popen[bytes]
) -> None:
    """Until `predicate()`; fails with the job log's tail when the time is up or the driver exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and driver.poll() is None:
        if predicate():
            return
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    ended = "" if driver.poll() is None else f"the driver exited ({driver.returncode}) "
    raise AssertionError(f"{ended}before {what} (waited up to {timeout_s:.0f}s); job log tail:\n{tail}")


def isolated(pipeline: Pipeline, tag: str) -> tuple[Pipeline, PlatformNames]:
    """`pipeline` and the platform topics with names of this test's own (topics, index bases)."""
    own = replace(
        pipeline,
        topic=replace(pipeline.topic, name=f"{pipeline.topic.name}_{tag}"),
        indices={k: replace(v, base=f"t{tag}-{v.base}") for k, v in pipeline.indices.items()},
    )
    platform = replace(
        PLATFORM,
        alerts_topic=replace(PLATFORM.alerts_topic, name=f"anomaly_alerts_{tag}"),
        dead_letter_topic=replace(PLATFORM.dead_letter_topic, name=f"dead_letter_topic_{tag}"),
    )
    return own, platform


def prepare(settings: Settings, pipeline: Pipeline, platform: PlatformNames) -> None:
    """Migrations, the pipeline's and the platform's topics, its index templates."""
    apply_migrations(settings.pg_url)
    ensure_topics(kafka_admin(settings), [pipeline.topic, platform.alerts_topic, platform.dead_letter_topic])
    if pipeline.indices:
        ensure_index_templates(es_client(settings), list(pipeline.indices.values()))


def send(settings: Settings, topic: str, records: list[GeneratedEvent]) -> None:
    """Produces `records` to `topic` and waits until every one is delivered."""
    produce(iter(records), producer_config=kafka_config(settings), topic=topic)


def topic_messages(settings: Settings, topic: str) -> list[Any]:
    """Every message of `topic` (read to the true end, whatever the broker reports as end)."""
    consumer = Consumer(
        kafka_config(settings, **{"group.id": f"check-{uuid.uuid4().hex}", "enable.auto.commit": False})
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        messages, idle_polls = [], 0
        while idle_polls < 3:
            batch = consumer.consume(1000, timeout=1.0)
            idle_polls = 0 if batch else idle_polls + 1
            for message in batch:
                assert message.error() is None, message.error()
                messages.append(message)
        return messages
    finally:
        consumer.close()


def scalar(settings: Settings, query: str, *params: Any) -> Any:
    """The first column of the first row of `query`."""
    with pg_connect(settings.pg_url) as conn:
        row = conn.execute(query, params or None).fetchone()
    assert row is not None, query
    return row[0]


def kill_twice_then_finish(
    pipeline: Pipeline, log: Path, args: tuple[str, ...], rows: Callable[[], int], expected_rows: int
) -> list[int]:
    """SIGKILLs the spark-submitted driver twice mid-run (each time after 2,000 more rows landed),
    then runs it to the end of the topic (`--available-now`); returns the row counts at the kills."""
    landed_before_kill = []
    for _ in range(2):
        floor = rows()
        driver = start_driver(pipeline, log, *args)
        wait_for(lambda floor=floor: rows() > floor + 2_000, 240, "batches landed", log, driver)
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(30)
        landed_before_kill.append(rows())
    assert landed_before_kill[-1] < expected_rows, "the second kill must come before the end, or the test proves little"
    finish = start_driver(pipeline, log, *args, "--available-now")
    assert finish.wait(600) == 0, log.read_text(errors="replace")[-3000:]
    return landed_before_kill
