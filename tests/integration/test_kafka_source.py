"""The Kafka source end to end: a real local SparkSession reading a real Apache Kafka broker into Parquet.

Each test uses topics of its own on the session broker, runs `trigger(availableNow=True)` queries
into a Parquet sink (or `noop` where only batch sizes matter) and asserts on what landed.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic
from pyspark.errors import AnalysisException
from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQueryException

from spark_jobs.sources.kafka import (
    KAFKA_SCHEMA,
    KafkaLogView,
    KafkaSourceOptions,
    jvm_class_exists,
    native_kafka_available,
    read_kafka_stream,
    read_offset_range,
)
from spark_jobs.sources.kafka_offsets import DataLossError, OffsetRange
from tests.integration.kafka_queries import QUERY_TIMEOUT_S, run_available_now

pytestmark = pytest.mark.integration
# The session-wide `spark` fixture (a no-op once tests/conftest.py registers this plugin too).

TOPIC_CONFIGS = {"retention.ms": str(7 * 24 * 3600 * 1000), "cleanup.policy": "delete"}


def create_topic(
    bootstrap: str, partitions: int = 3, name: str | None = None, configs: Mapping[str, str] | None = None
) -> str:
    """A topic of this test's own with explicit configs (`configs` adds to or overrides them)."""
    topic = name or f"src_{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # must outlive its futures
    admin.create_topics([NewTopic(topic, partitions, 1, config={**TOPIC_CONFIGS, **(configs or {})})])[topic].result(
        timeout=30
    )
    return topic


def delete_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})  # must outlive its futures
    admin.delete_topics([topic])[topic].result(timeout=30)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-metadata"})
    try:
        deadline = time.monotonic() + 30
        while topic in consumer.list_topics(timeout=10).topics:
            assert time.monotonic() < deadline, f"topic {topic} still listed 30 s after its deletion"
            time.sleep(0.1)
    finally:
        consumer.close()


def produce(bootstrap: str, topic: str, count: int, *, partitions: int = 3, first: int = 0) -> None:
    """`count` JSON records {"i": n}, n = first.., round-robin over partitions, in many small batches."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.num.messages": 500})
    for n in range(first, first + count):
        while True:
            try:
                producer.produce(
                    topic, value=json.dumps({"i": n}).encode(), key=str(n).encode(), partition=n % partitions
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    remaining = producer.flush(30)
    assert remaining == 0, f"{remaining} records to {topic} were not delivered within 30 s"


def source_options(bootstrap: str, topics: str, **extra: Any) -> dict[str, str]:
    return {"kafka.bootstrap.servers": bootstrap, "subscribe": topics, **{k: str(v) for k, v in extra.items()}}


def landed(spark: SparkSession, sink: Path) -> dict[str, Any]:
    """What the Parquet sink holds: counts, duplicates, and per-partition offset spans."""
    spark.read.parquet(str(sink)).createOrReplaceTempView("landed")
    totals = spark.sql(
        "SELECT count(*) AS rows, count(DISTINCT topic, partition, offset) AS positions, "
        "count(DISTINCT CAST(value AS STRING)) AS values FROM landed"
    ).first()
    assert totals is not None
    spans = spark.sql(
        "SELECT topic, partition, min(offset) AS lo, max(offset) AS hi, count(*) AS n "
        "FROM landed GROUP BY topic, partition ORDER BY topic, partition"
    ).collect()
    return {
        "rows": totals["rows"],
        "positions": totals["positions"],
        "values": totals["values"],
        "spans": {(r["topic"], r["partition"]): (r["lo"], r["hi"], r["n"]) for r in spans},
    }


@pytest.fixture
def paths(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(checkpoint, sink) directories of one test."""
    yield tmp_path / "checkpoint", tmp_path / "sink"


def test_available_now_reads_every_record_once_and_restarts_from_checkpoint(
    spark: SparkSession,
    kafka_bootstrap: str,
    paths: tuple[Path, Path],
) -> None:
    checkpoint, sink = paths
    topic = create_topic(kafka_bootstrap)
    produce(kafka_bootstrap, topic, 3000)
    options = source_options(kafka_bootstrap, topic, startingOffsets="earliest", maxRecordsPerPartition=400)

    assert read_kafka_stream(spark, options, use_native=False).schema == KAFKA_SCHEMA
    run_available_now(spark, options, checkpoint, sink)
    first = landed(spark, sink)
    assert first["rows"] == first["positions"] == first["values"] == 3000
    assert first["spans"] == {(topic, p): (0, 999, 1000) for p in range(3)}  # complete, no gaps

    row = spark.read.parquet(str(sink)).where("offset = 0 AND partition = 1").first()
    assert row is not None
    assert json.loads(row["value"]) == {"i": 1} and row["key"] == b"1" and row["timestampType"] == 0
    assert abs(row["timestamp"].timestamp() - time.time()) < 600

    # A second run on the same checkpoint continues where the first stopped.
    produce(kafka_bootstrap, topic, 1500, first=3000)
    run_available_now(spark, options, checkpoint, sink)
    second = landed(spark, sink)
    assert second["rows"] == second["positions"] == second["values"] == 4500
    assert second["spans"] == {(topic, p): (0, 1499, 1500) for p in range(3)}


def test_processing_time_trigger_reads_records_produced_while_running(
    spark: SparkSession,
    kafka_bootstrap: str,
    paths: tuple[Path, Path],
) -> None:
    checkpoint, sink = paths
    topic = create_topic(kafka_bootstrap)
    produce(kafka_bootstrap, topic, 90)  # before the start: not read with startingOffsets=latest
    options = source_options(kafka_bootstrap, topic, maxOffsetsPerTrigger=200)
    query = (
        read_kafka_stream(spark, options, use_native=False)
        .writeStream.trigger(processingTime="500 milliseconds")
        .option("checkpointLocation", str(checkpoint))
        .format("parquet")
        .option("path", str(sink))
        .start()
    )
    try:
        deadline = time.monotonic() + QUERY_TIMEOUT_S
        while query.lastProgress is None:  # the first batch fixes the start offsets
            assert time.monotonic() < deadline, "the streaming query made no progress"
            time.sleep(0.2)
        produce(kafka_bootstrap, topic, 600, first=90)
        query.processAllAvailable()
        assert query.exception() is None
    finally:
        query.stop()
    result = landed(spark, sink)
    assert result["rows"] == result["positions"] == 600
    assert result["spans"] == {(topic, p): (30, 229, 200) for p in range(3)}
    assert max(progress["numInputRows"] for progress in query.recentProgress) <= 200


def test_max_offsets_per_trigger_limits_every_batch(
    spark: SparkSession,
    kafka_bootstrap: str,
    paths: tuple[Path, Path],
) -> None:
    checkpoint, _ = paths
    topic = create_topic(kafka_bootstrap)
    produce(kafka_bootstrap, topic, 2500)
    query = run_available_now(
        spark, source_options(kafka_bootstrap, topic, startingOffsets="earliest", maxOffsetsPerTrigger=1000), checkpoint
    )
    sizes = [progress["numInputRows"] for progress in query.recentProgress if progress["numInputRows"]]
    assert sizes == [1000, 1000, 500]


def test_starting_offsets_latest_reads_only_new_records(
    spark: SparkSession,
    kafka_bootstrap: str,
    paths: tuple[Path, Path],
) -> None:
    checkpoint, sink = paths
    topic = create_topic(kafka_bootstrap)
    produce(kafka_bootstrap, topic, 300)
    options = source_options(kafka_bootstrap, topic, startingOffsets="latest")
    query = run_available_now(spark, options, checkpoint, sink)
    assert sum(progress["numInputRows"] for progress in query.recentProgress) == 0

    produce(kafka_bootstrap, topic, 150, first=300)
    run_available_now(spark, options, checkpoint, sink)
    result = landed(spark, sink)
    assert result["rows"] == result["values"] == 150
    assert result["spans"] == {(topic, p): (100, 149, 50) for p in range(3)}


def test_starting_offsets_json(
    spark: SparkSession,
    kafka_bootstrap: str,
    paths: tuple[Path, Path],
) -> None:
    checkpoint, sink = paths
    topic = create_topic(kafka_bootstrap)
    produce(kafka_bootstrap, topic, 300)
    starting = json.dumps({topic: {"0": 10, "1": -2, "2": -1}})
    run_available_now(spark, source_options(kafka_bootstrap, topic, startingOffsets=starting), checkpoint, sink)
    assert landed(spark, sink)["spans"] == {(topic, 0): (10, 99, 90), (topic, 1): (0, 99, 100)}


def test_fifty_thousand_records_in_small_batches_all_land(
    spark: SparkSession,
    kafka_bootstrap: str,
    paths: tuple[Path, Path],
) -> None:
    checkpoint, sink = paths
    topic = create_topic(kafka_bootstrap)
    produce(kafka_bootstrap, topic, 50_000)
    run_available_now(spark, source_options(kafka_bootstrap, topic, startingOffsets="earliest"), checkpoint, sink)
    result = landed(spark, sink)
    assert result["rows"] == result["positions"] == 50_000
    assert result["spans"] == {
        (topic, 0): (0, 16666, 16667),
        (topic, 1): (0, 16666, 16667),
        (topic, 2): (0, 16665, 16666),
    }


def test_partitions_added_to_a_running_topic_are_read_from_their_first_offset(
    spark: SparkSession,
    kafka_bootstrap: str,
    paths: tuple[Path, Path],
) -> None:
    checkpoint, sink = paths
    topic = create_topic(kafka_bootstrap, partitions=2)
    produce(kafka_bootstrap, topic, 40, partitions=2)
    options = source_options(kafka_bootstrap, topic, startingOffsets="earliest")
    query = (
        read_kafka_stream(spark, options, use_native=False)
        .writeStream.trigger(processingTime="500 milliseconds")
        .option("checkpointLocation", str(checkpoint))
        .format("parquet")
        .option("path", str(sink))
        .start()
    )
    try:
        query.processAllAvailable()
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})  # must outlive its futures
        admin.create_partitions([NewPartitions(topic, 4)])[topic].result(timeout=30)
        # Records for the new partitions go out before the query sees them: none may be skipped.
        produce(kafka_bootstrap, topic, 60, partitions=4, first=40)
        deadline = time.monotonic() + QUERY_TIMEOUT_S
        while spark.read.parquet(str(sink)).count() < 100:
            assert query.exception() is None, query.exception()
            assert time.monotonic() < deadline, "the records of the new partitions never landed"
            query.processAllAvailable()
            time.sleep(0.5)
    finally:
        query.stop()
    result = landed(spark, sink)
    assert result["rows"] == result["positions"] == result["values"] == 100
    assert result["spans"][(topic, 2)] == (0, 14, 15)
    assert result["spans"][(topic, 3)] == (0, 14, 15)


def test_a_compacted_topic_with_offset_gaps_is_read_completely(
    spark: SparkSession,
    kafka_bootstrap: str,
    paths: tuple[Path, Path],
) -> None:
    """The log cleaner removes overwritten keys, leaving gaps in the offsets; every record the
    compacted log still holds lands, and no task waits at a gap (the run ends quickly)."""
    checkpoint, sink = paths
    topic = create_topic(
        kafka_bootstrap,
        partitions=1,
        configs={
            "cleanup.policy": "compact",
            "segment.ms": "100",
            "min.cleanable.dirty.ratio": "0.01",
            "min.compaction.lag.ms": "0",
            "delete.retention.ms": "100",
        },
    )
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 0})
    for n in range(600):  # 20 keys overwritten again and again, and every tenth record a key of its own
        key = f"once{n}" if n % 10 == 0 else f"k{n % 20}"
        producer.produce(topic, key=key.encode(), value=json.dumps({"i": n}).encode(), partition=0)
        if n % 50 == 49:
            producer.flush(30)
            time.sleep(0.15)  # past segment.ms: the next record starts a new segment
    assert producer.flush(30) == 0

    def survivors() -> list[int]:
        consumer = Consumer(
            {
                "bootstrap.servers": kafka_bootstrap,
                "group.id": f"check-{uuid.uuid4().hex}",
                "enable.partition.eof": True,
            }
        )
        try:
            consumer.assign([TopicPartition(topic, 0, 0)])
            offsets: list[int] = []
            while True:
                message = consumer.poll(10)
                assert message is not None, "no partition EOF within 10 s"
                if message.error() is not None:
                    return offsets
                offsets.append(message.offset())
        finally:
            consumer.close()

    deadline = time.monotonic() + 120
    while len(kept := survivors()) > 300:
        assert time.monotonic() < deadline, f"the log cleaner left {len(kept)} of 600 records within 120 s"
        time.sleep(1)
        producer.produce(topic, key=b"roll", value=b'{"i": -1}', partition=0)  # rolls the active segment
        producer.flush(30)
    kept = survivors()
    assert kept[-1] - kept[0] + 1 > len(kept), "compaction left no gaps in the offsets"

    started = time.monotonic()
    options = source_options(kafka_bootstrap, topic, startingOffsets="earliest", maxOffsetsPerTrigger=97)
    run_available_now(spark, options, checkpoint, sink)
    elapsed = time.monotonic() - started
    spark.read.parquet(str(sink)).createOrReplaceTempView("compacted")
    landed_offsets = [r["offset"] for r in spark.sql("SELECT offset FROM compacted ORDER BY offset").collect()]
    assert landed_offsets == kept
    assert elapsed < 60, f"the run took {elapsed:.0f} s: a task waited at a gap"


def test_topic_created_after_query_start_is_read_from_earliest(
    spark: SparkSession,
    kafka_bootstrap: str,
    paths: tuple[Path, Path],
) -> None:
    """A subscribed topic that appears after the start is read from its first offset."""
    checkpoint, sink = paths
    first = create_topic(kafka_bootstrap)
    later = f"src_{uuid.uuid4().hex[:10]}"
    produce(kafka_bootstrap, first, 30)
    options = source_options(kafka_bootstrap, f"{first},{later}", startingOffsets="latest")
    run_available_now(spark, options, checkpoint, sink)  # starts at the end of `first`; `later` absent

    create_topic(kafka_bootstrap, partitions=2, name=later)
    produce(kafka_bootstrap, later, 20, partitions=2)
    produce(kafka_bootstrap, first, 6, first=30)
    run_available_now(spark, options, checkpoint, sink)
    assert landed(spark, sink)["spans"] == {
        **{(first, p): (10, 11, 2) for p in range(3)},
        (later, 0): (0, 9, 10),
        (later, 1): (0, 9, 10),
    }


def test_fail_on_data_loss_when_topic_is_recreated(
    spark: SparkSession,
    kafka_bootstrap: str,
    paths: tuple[Path, Path],
) -> None:
    """A recreated topic puts the checkpointed offsets beyond the end of the log: data loss as well."""
    checkpoint, sink = paths
    topic = create_topic(kafka_bootstrap)
    produce(kafka_bootstrap, topic, 60)
    options = source_options(kafka_bootstrap, topic, startingOffsets="earliest")
    run_available_now(spark, options, checkpoint, sink)

    delete_topic(kafka_bootstrap, topic)
    create_topic(kafka_bootstrap, name=topic)
    produce(kafka_bootstrap, topic, 9)
    with pytest.raises(StreamingQueryException, match=r"offset 20 is beyond the end of the log.*failOnDataLoss=false"):
        run_available_now(spark, options, checkpoint, sink)

    run_available_now(spark, {**options, "failOnDataLoss": "false"}, checkpoint, sink)
    result = landed(spark, sink)
    assert result["rows"] == 69  # 60 from the old log, all 9 of the new one
    assert result["spans"] == {(topic, p): (0, 19, 23) for p in range(3)}


def test_read_range_beyond_the_log_end_is_data_loss(kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap, partitions=1)
    produce(kafka_bootstrap, topic, 10, partitions=1)
    strict = KafkaSourceOptions.from_options(source_options(kafka_bootstrap, topic))
    with pytest.raises(DataLossError, match=rf"{topic}-0: the log ends at 10 but the batch planned records up to 15"):
        list(read_offset_range(strict, OffsetRange(topic, 0, 0, 15)))
    lenient = KafkaSourceOptions.from_options(source_options(kafka_bootstrap, topic, failOnDataLoss="false"))
    batches = list(read_offset_range(lenient, OffsetRange(topic, 0, 3, 15)))
    assert [offset for batch in batches for offset in batch.column("offset").to_pylist()] == list(range(3, 10))


def test_log_view_reports_where_each_log_starts_and_ends(kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap)
    produce(kafka_bootstrap, topic, 3001)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})  # must outlive its futures
    futures = admin.delete_records([TopicPartition(topic, 1, 400)])
    for future in futures.values():
        future.result(timeout=30)
    view = KafkaLogView(KafkaSourceOptions.from_options(source_options(kafka_bootstrap, topic)))
    try:
        keys = view.partitions()
        assert keys == [(topic, 0), (topic, 1), (topic, 2)]
        bounds = view.bounds(keys)
        assert {key: (b.start, b.end) for key, b in bounds.items()} == {
            (topic, 0): (0, 1001),
            (topic, 1): (400, 1000),
            (topic, 2): (0, 1000),
        }
    finally:
        view.close()


def test_native_switch(spark: SparkSession) -> None:
    # The JVM connector jar is not installed on this machine; the check must say so, cheaply.
    assert native_kafka_available(spark) is False
    assert jvm_class_exists(spark, "org.apache.spark.sql.SparkSession") is True
    options = source_options("127.0.0.1:1", "t", maxRecordsPerPartition=10)
    with pytest.raises(AnalysisException, match="kafka"):
        read_kafka_stream(spark, options, use_native=True)
    assert read_kafka_stream(spark, options, use_native=False).schema == KAFKA_SCHEMA
