"""The Kafka source end to end: a real local SparkSession reading a real broker (Tansu) into Parquet.

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
from confluent_kafka.admin import AdminClient, NewTopic
from pyspark.errors import AnalysisException
from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQuery, StreamingQueryException

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

pytestmark = pytest.mark.integration
# The session-wide `spark` fixture (a no-op once tests/conftest.py registers this plugin too).

QUERY_TIMEOUT_S = 120
TOPIC_CONFIGS = {"retention.ms": str(7 * 24 * 3600 * 1000), "cleanup.policy": "delete"}


def create_topic(bootstrap: str, partitions: int = 3, name: str | None = None) -> str:
    """A topic with explicit configs (Tansu reports an empty config otherwise)."""
    topic = name or f"src_{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # must outlive its futures
    admin.create_topics([NewTopic(topic, partitions, 1, config=TOPIC_CONFIGS)])[topic].result(timeout=30)
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
    """`count` JSON records {"i": n}, n = first.., round-robin over partitions, in many small batches.

    Small batches (linger, batch.num.messages) make Tansu's reported high watermark fall short
    of the log end, which is the quirk the source must survive.
    """
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


def run_available_now(
    spark: SparkSession, options: Mapping[str, str], checkpoint: Path, sink: Path | None = None
) -> StreamingQuery:
    """Run one availableNow query to its end; into Parquet at `sink`, or `noop` without one."""
    writer = read_kafka_stream(spark, options, use_native=False).writeStream.trigger(availableNow=True)
    writer = writer.option("checkpointLocation", str(checkpoint))
    query = writer.format("parquet").option("path", str(sink)).start() if sink else writer.format("noop").start()
    try:
        finished = query.awaitTermination(QUERY_TIMEOUT_S)
    finally:
        if query.isActive:
            query.stop()
    assert finished, f"availableNow query did not finish within {QUERY_TIMEOUT_S} s"
    return query


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


def test_tansu_short_high_watermark_loses_nothing(
    spark: SparkSession,
    kafka_bootstrap: str,
    paths: tuple[Path, Path],
) -> None:
    """Regression: Tansu reports the last batch's base offset + 1 as high watermark; all 50k must land."""
    checkpoint, sink = paths
    topic = create_topic(kafka_bootstrap)
    produce(kafka_bootstrap, topic, 50_000)
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "test-watermarks"})
    try:
        reported = sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(3))
    finally:
        consumer.close()

    run_available_now(spark, source_options(kafka_bootstrap, topic, startingOffsets="earliest"), checkpoint, sink)
    result = landed(spark, sink)
    assert result["rows"] == result["positions"] == 50_000, f"broker reported {reported} as the sum of high watermarks"
    assert result["spans"] == {
        (topic, 0): (0, 16666, 16667),
        (topic, 1): (0, 16666, 16667),
        (topic, 2): (0, 16665, 16666),
    }


def test_topic_created_after_query_start_is_read_from_earliest(
    spark: SparkSession,
    kafka_bootstrap: str,
    paths: tuple[Path, Path],
) -> None:
    """New partitions appear (Tansu cannot add partitions to a topic, so a later topic stands in)."""
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
    """Tansu cannot delete records (no DeleteRecords, no retention in memory): a recreated topic
    puts the checkpointed offsets beyond the end of the log, which is data loss as well."""
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


def test_end_probe_finds_the_true_end_and_caches_it(kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap)
    produce(kafka_bootstrap, topic, 3001)
    view = KafkaLogView(KafkaSourceOptions.from_options(source_options(kafka_bootstrap, topic)))
    try:
        keys = view.partitions()
        assert keys == [(topic, 0), (topic, 1), (topic, 2)]
        watermarks = view.watermarks(keys)
        started = time.monotonic()
        ends = view.ends(watermarks)
        probe_s = time.monotonic() - started
        assert {key: (end.offset, end.exact) for key, end in ends.items()} == {
            (topic, 0): (1001, True),
            (topic, 1): (1000, True),
            (topic, 2): (1000, True),
        }, f"reported high watermarks: {watermarks}"
        assert probe_s < 2, f"the end probe took {probe_s:.2f} s"
        # Nothing new: the reported watermark did not move, the cached end is reused.
        started = time.monotonic()
        assert view.ends(view.watermarks(keys)) == ends
        assert time.monotonic() - started < 0.5
    finally:
        view.close()


def test_native_switch(spark: SparkSession) -> None:
    # The JVM connector jar is not installed on this machine; the check must say so, cheaply.
    assert native_kafka_available(spark) is False
    assert jvm_class_exists(spark, "org.apache.spark.sql.SparkSession") is True
    options = source_options("127.0.0.1:1", "t", maxRecordsPerPartition=10, probeEndOffsets="true")
    with pytest.raises(AnalysisException, match="kafka"):
        read_kafka_stream(spark, options, use_native=True)
    assert read_kafka_stream(spark, options, use_native=False).schema == KAFKA_SCHEMA
