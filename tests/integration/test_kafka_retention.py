"""Retention deletes records a query has not read yet: the outcome is explicit, never silent.

On the session broker (retention checked every second), each test's topic rolls a segment every
100 ms. A first batch is read; a second batch is produced and retention deletes it unread; then
more records arrive. With failOnDataLoss=true the query fails naming the lost range `[from, to)`
of the partition; with failOnDataLoss=false and the lostRanges.* options (the catalog's
on_data_loss = "record") it lands what is left and records each lost range once in the real
PostgreSQL table of migration 0009.

The topic starts with a long retention.ms and is switched to 100 ms only once the first batch
has been read (and back once the second batch is gone): with a short retention from the start,
whether the first batch outlives the Spark query's start-up would be a race.
"""

from __future__ import annotations

import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic, ResourceType
from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQueryException

from spark_jobs.sources.kafka import KafkaSourceOptions, read_offset_range
from spark_jobs.sources.kafka_lost_ranges import LostRangeRecordError
from spark_jobs.sources.kafka_offsets import DataLossError, OffsetRange
from tests.integration.kafka_queries import run_available_now
from tributary.catalog import PLATFORM
from tributary.clients import pg_connect
from tributary.kafka_log import KafkaLog, LogBounds
from tributary.migrations import apply_migrations

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 2
FIRST_BATCH = 20  # records over both partitions: offsets 0-9 of each
SECOND_BATCH = 20  # offsets 10-19 of each: deleted before they are read
LAST_BATCH = 10  # what is left to read after the loss
READ_UNTIL = FIRST_BATCH // PARTITIONS  # the checkpoint's next offset in every partition
LONG_RETENTION_MS = str(3600 * 1000)
RETENTION_TIMEOUT_S = 60
JOB = "retention_test"


def create_topic(bootstrap: str) -> str:
    """A topic of this test's own whose segments roll every 100 ms, so retention can delete them."""
    topic = f"retention_{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # must outlive its futures
    configs = {"retention.ms": LONG_RETENTION_MS, "segment.ms": "100", "cleanup.policy": "delete"}
    admin.create_topics([NewTopic(topic, PARTITIONS, 1, config=configs)])[topic].result(timeout=30)
    return topic


def set_retention(bootstrap: str, topic: str, retention_ms: str) -> None:
    """Set the topic's retention.ms and wait until the broker reports it."""
    admin = AdminClient({"bootstrap.servers": bootstrap})  # must outlive its futures
    entry = ConfigEntry("retention.ms", retention_ms, incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)
    deadline = time.monotonic() + 30
    while True:
        (described,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
        if described.result(timeout=30)["retention.ms"].value == retention_ms:
            return
        assert time.monotonic() < deadline, f"{topic}: retention.ms={retention_ms} not in effect after 30 s"
        time.sleep(0.2)


def produce(bootstrap: str, topic: str, count: int, *, first: int = 0) -> None:
    """`count` records {"i": n}, n = first.., round-robin over the partitions."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for n in range(first, first + count):
        producer.produce(topic, value=f'{{"i": {n}}}'.encode(), key=str(n).encode(), partition=n % PARTITIONS)
    assert producer.flush(30) == 0, f"records to {topic} were not delivered within 30 s"


def bounds(bootstrap: str, topic: str) -> dict[int, LogBounds]:
    with KafkaLog({"bootstrap.servers": bootstrap}, client_id="retention-test") as reader:
        return reader.topic_bounds(topic)


def lose_second_batch(bootstrap: str, topic: str) -> dict[int, LogBounds]:
    """Produce the second batch, let retention delete it unread, produce what is left; the bounds then.

    One more record after the batch rolls its segment (an active segment only goes once rolled).
    Retention may take that record too; the returned log starts say where each partition starts.
    """
    produce(bootstrap, topic, SECOND_BATCH, first=FIRST_BATCH)
    time.sleep(0.3)  # past segment.ms: the next record starts a new segment
    produce(bootstrap, topic, PARTITIONS, first=FIRST_BATCH + SECOND_BATCH)
    set_retention(bootstrap, topic, "100")
    second_batch_end = (FIRST_BATCH + SECOND_BATCH) // PARTITIONS
    deadline = time.monotonic() + RETENTION_TIMEOUT_S
    while any(b.start < second_batch_end for b in bounds(bootstrap, topic).values()):
        assert time.monotonic() < deadline, f"retention did not delete the second batch within {RETENTION_TIMEOUT_S} s"
        time.sleep(0.5)
    set_retention(bootstrap, topic, LONG_RETENTION_MS)
    time.sleep(2)  # a retention check under the long retention has run: nothing more goes
    produce(bootstrap, topic, LAST_BATCH, first=FIRST_BATCH + SECOND_BATCH + PARTITIONS)
    after = bounds(bootstrap, topic)
    assert all(b.start >= second_batch_end and b.end > b.start for b in after.values()), after
    return after


def source_options(bootstrap: str, topic: str, **extra: str) -> dict[str, str]:
    return {"kafka.bootstrap.servers": bootstrap, "subscribe": topic, "startingOffsets": "earliest", **extra}


def recording_options(pg_url: str, table: str = PLATFORM.lost_ranges_table) -> dict[str, str]:
    """failOnDataLoss=false with the lost ranges recorded, as the jobs of on_data_loss="record" run."""
    return {"failOnDataLoss": "false", "lostRanges.pgUrl": pg_url, "lostRanges.table": table, "lostRanges.job": JOB}


def landed_offsets(spark: SparkSession, sink: Path) -> dict[int, list[int]]:
    """Offsets in the Parquet sink per partition, sorted (duplicates kept)."""
    rows = spark.read.parquet(str(sink)).select("partition", "offset").collect()
    result: dict[int, list[int]] = {}
    for row in rows:
        result.setdefault(row["partition"], []).append(row["offset"])
    return {partition: sorted(offsets) for partition, offsets in sorted(result.items())}


def lost_rows(pg_url: str) -> list[tuple[Any, ...]]:
    with pg_connect(pg_url) as conn:
        return conn.execute(
            f"SELECT job_name, topic, kafka_partition, from_offset, to_offset, reason "
            f"FROM {PLATFORM.lost_ranges_table} ORDER BY kafka_partition"
        ).fetchall()


def read_first_batch(spark: SparkSession, bootstrap: str, topic: str, checkpoint: Path, sink: Path) -> None:
    produce(bootstrap, topic, FIRST_BATCH)
    run_available_now(spark, source_options(bootstrap, topic), checkpoint, sink)
    assert landed_offsets(spark, sink) == {partition: list(range(READ_UNTIL)) for partition in range(PARTITIONS)}


def test_fail_on_data_loss_names_the_deleted_range(spark: SparkSession, kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = create_topic(kafka_bootstrap)
    checkpoint, sink = tmp_path / "checkpoint", tmp_path / "sink"
    read_first_batch(spark, kafka_bootstrap, topic, checkpoint, sink)
    after = lose_second_batch(kafka_bootstrap, topic)

    options = source_options(kafka_bootstrap, topic, failOnDataLoss="true")
    with pytest.raises(StreamingQueryException) as info:
        run_available_now(spark, options, checkpoint, sink)
    found = re.search(
        rf"{topic}-(\d+): records \[(\d+), (\d+)\) were deleted \(retention\) before they were read", str(info.value)
    )
    assert found, str(info.value)[:2000]
    partition, start, end = (int(group) for group in found.groups())
    assert (start, end) == (READ_UNTIL, after[partition].start)
    assert "failOnDataLoss=false" in str(info.value)  # ... and the way forward


def test_record_mode_lands_what_is_left_and_records_each_lost_range_once(
    spark: SparkSession, kafka_bootstrap: str, pg_url: str, tmp_path: Path
) -> None:
    apply_migrations(pg_url)
    topic = create_topic(kafka_bootstrap)
    checkpoint, sink = tmp_path / "checkpoint", tmp_path / "sink"
    read_first_batch(spark, kafka_bootstrap, topic, checkpoint, sink)
    # A second query at the same place: it finds the same loss again.
    replay = Path(shutil.copytree(checkpoint, tmp_path / "replay"))
    after = lose_second_batch(kafka_bootstrap, topic)
    options = {**source_options(kafka_bootstrap, topic), **recording_options(pg_url)}
    # The first batch, then what retention left: nothing else is missing.
    expected = {p: [*range(READ_UNTIL), *range(b.start, b.end)] for p, b in sorted(after.items())}
    recorded = [(JOB, topic, p, READ_UNTIL, b.start) for p, b in sorted(after.items())]

    run_available_now(spark, options, checkpoint, sink)
    assert landed_offsets(spark, sink) == expected
    rows = lost_rows(pg_url)
    assert [row[:5] for row in rows] == recorded
    assert all("deleted (retention) before they were read" in row[5] for row in rows)

    # Run again: nothing new to read, nothing recorded twice.
    query = run_available_now(spark, options, checkpoint, sink)
    assert sum(progress["numInputRows"] for progress in query.recentProgress) == 0
    assert landed_offsets(spark, sink) == expected
    # The same reading from the same checkpointed offsets (driver planning and tasks both find
    # the loss again): the same records are read, the table still holds each range once.
    query = run_available_now(spark, options, replay)
    assert sum(progress["numInputRows"] for progress in query.recentProgress) == sum(b.size for b in after.values())
    assert lost_rows(pg_url) == rows


def test_a_task_reading_a_deleted_range_fails_or_records_it(kafka_bootstrap: str, pg_url: str) -> None:
    """The executor side: a planned range whose start retention deleted meanwhile."""
    apply_migrations(pg_url)
    topic = create_topic(kafka_bootstrap)
    produce(kafka_bootstrap, topic, FIRST_BATCH)
    log = lose_second_batch(kafka_bootstrap, topic)[0]
    planned = OffsetRange(topic, 0, READ_UNTIL, log.end)

    strict = KafkaSourceOptions.from_options(source_options(kafka_bootstrap, topic))
    with pytest.raises(DataLossError, match=rf"{topic}-0: records \[{READ_UNTIL}, {log.start}\) were deleted"):
        list(read_offset_range(strict, planned))

    lenient = KafkaSourceOptions.from_options({**source_options(kafka_bootstrap, topic), **recording_options(pg_url)})
    for _ in range(2):  # a retried task finds and records the same loss
        batches = list(read_offset_range(lenient, planned))
        assert [o for batch in batches for o in batch.column("offset").to_pylist()] == list(range(log.start, log.end))
    assert [row[:5] for row in lost_rows(pg_url)] == [(JOB, topic, 0, READ_UNTIL, log.start)]

    # Records that cannot be recorded are not skipped: the task fails, naming the range and the table.
    unrecorded = KafkaSourceOptions.from_options(
        {**source_options(kafka_bootstrap, topic), **recording_options(pg_url, table="no_such_table")}
    )
    with pytest.raises(LostRangeRecordError, match=rf"records \[{READ_UNTIL}, {log.start}\).*no_such_table"):
        list(read_offset_range(unrecorded, planned))
