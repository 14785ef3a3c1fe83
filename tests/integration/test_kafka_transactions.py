"""Transactional producers upstream: the user_events job reads read_committed.

An upstream producer writes transactions into the pipeline's topic, some committed and some
aborted, and leaves one open while the job runs. The job must land exactly the committed records,
none of the aborted ones, nothing of the open transaction until it commits, and never wait at a
transaction marker that ends an offset range (the log ends with one here).
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from pyspark.sql import SparkSession

from spark_jobs.user_events.job import JobOptions, UserEventsJob
from tests.integration import streaming_fixtures
from tributary.catalog import USER_EVENTS, Pipeline, PlatformNames
from tributary.clients import kafka_config, pg_connect
from tributary.producers.user_events import EventMix, generate_events, user_rows
from tributary.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USERS = 50
PER_TRANSACTION = 200
ABORTED_PRODUCT = 987_654  # every aborted event carries it: none may reach a sink


def payloads(count: int, seed: int, *, aborted: bool) -> list[tuple[bytes | None, bytes]]:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    out = []
    for event in generate_events(count, seed=seed, start=start, events_per_s=50, mix=EventMix(users=USERS)):
        doc = json.loads(event.value)
        if aborted:
            doc["product_id"] = ABORTED_PRODUCT
        out.append((event.key, json.dumps(doc).encode()))
    return out


def committed_positions(settings: Settings, topic: str) -> set[tuple[int, int]]:
    """(partition, offset) of every record a read_committed consumer sees in `topic`."""
    consumer = Consumer(
        kafka_config(
            settings,
            **{
                "group.id": f"check-{uuid.uuid4().hex}",
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
            },
        )
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        positions: set[tuple[int, int]] = set()
        at_end: set[int] = set()
        while len(at_end) < len(partitions):
            message = consumer.poll(10)
            assert message is not None, "no partition EOF within 10 s"
            if message.error() is not None:
                at_end.add(message.partition())
                continue
            positions.add((message.partition(), message.offset()))
        return positions
    finally:
        consumer.close()


def run_job(spark: SparkSession, settings: Settings, pipeline: Pipeline, platform: PlatformNames) -> float:
    """One availableNow run with small batches (ranges end inside aborted data and at markers); seconds."""
    started = time.monotonic()
    options = JobOptions(available_now=True, es_enabled=False, max_offsets_per_trigger=150, max_records_per_task=70)
    assert UserEventsJob(spark, settings, options, pipeline, platform).run() == 0, "the job failed; see its log"
    return time.monotonic() - started


def stored(settings: Settings) -> tuple[set[tuple[int, int]], int]:
    """Positions of the raw rows, and how many rows came from aborted transactions (raw or dead)."""
    with pg_connect(settings.pg_url) as conn:
        rows = conn.execute("SELECT kafka_partition, kafka_offset FROM user_events").fetchall()
        aborted = conn.execute(
            "SELECT (SELECT count(*) FROM user_events WHERE product_id = %s) + (SELECT count(*) FROM dead_letters)",
            (ABORTED_PRODUCT,),
        ).fetchone()
    assert aborted is not None
    return {(int(p), int(o)) for p, o in rows}, int(aborted[0])


@pytest.mark.timeout(900)
def test_only_committed_transactions_land_and_no_range_waits_at_a_marker(
    spark: SparkSession, settings: Settings
) -> None:
    pipeline, platform = streaming_fixtures.isolated(USER_EVENTS, uuid.uuid4().hex[:8])
    streaming_fixtures.prepare(settings, pipeline, platform)
    with pg_connect(settings.pg_url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO users (user_id, name, email, region, segment) VALUES (%s, %s, %s, %s, %s)", user_rows(USERS)
        )
    topic = pipeline.topic.name

    producer = Producer(kafka_config(settings, **{"transactional.id": f"upstream-{uuid.uuid4().hex}"}))
    producer.init_transactions(30)
    # Committed, aborted, committed, aborted, committed, aborted: the log ends with an abort marker.
    for n in range(6):
        aborted = n % 2 == 1
        producer.begin_transaction()
        for key, value in payloads(PER_TRANSACTION, seed=100 + n, aborted=aborted):
            producer.produce(topic, key=key, value=value)
        if aborted:
            # Written to the log first (an abort would otherwise purge what is still queued): the
            # job must skip records that are really there.
            assert producer.flush(30) == 0
            producer.abort_transaction(30)
        else:
            producer.commit_transaction(30)
    # One transaction stays open while the job runs: its records are not readable yet.
    producer.begin_transaction()
    for key, value in payloads(PER_TRANSACTION, seed=200, aborted=False):
        producer.produce(topic, key=key, value=value)
    producer.flush(30)

    first_run_s = run_job(spark, settings, pipeline, platform)
    positions, aborted_rows = stored(settings)
    expected = committed_positions(settings, topic)
    assert len(expected) == 3 * PER_TRANSACTION
    assert positions == expected
    assert aborted_rows == 0
    # A task waiting at a marker would sit out kafkaConsumer.pollTimeoutMs (120 s) and fail.
    assert first_run_s < 100, f"the run took {first_run_s:.0f} s"

    # The open transaction commits: the next run lands exactly its records, still none aborted.
    producer.commit_transaction(30)
    run_job(spark, settings, pipeline, platform)
    positions, aborted_rows = stored(settings)
    expected = committed_positions(settings, topic)
    assert len(expected) == 4 * PER_TRANSACTION
    assert positions == expected
    assert aborted_rows == 0
