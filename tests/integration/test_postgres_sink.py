"""COPY lines built in Spark, merged into real PostgreSQL tables: exact round trip, idempotent."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime

import pytest
from pyspark.sql import DataFrame, SparkSession

from spark_jobs.sinks.copy_lines import LINE, copy_lines, copy_payload
from spark_jobs.sinks.postgres import MergeTarget, PostgresSink, SinkError
from spark_jobs.user_events.job import SUMMARY_COLUMNS
from tributary.clients import pg_connect
from tributary.migrations import apply_migrations

pytestmark = pytest.mark.integration

NASTY = ['a,b "quoted" \\ back\\slash', "line\nbreak\r\n", "", "ünïcødé ✓", "\t tab", None]
DEAD = MergeTarget(
    "dead_letters",
    ("topic", "kafka_partition", "kafka_offset", "pipeline", "kafka_timestamp", "payload", "reasons", "detail"),
    key=("topic", "kafka_partition", "kafka_offset"),
)


def dead_letter_rows(spark: SparkSession, offset0: int = 0) -> DataFrame:
    ts = datetime(2026, 11, 23, 10, 0, 0, 123456)
    rows = [
        ("user_events", 1, offset0 + i, "user_events", ts, bytes([0, 255, i]), ["json_object", "ip_valid"], text)
        for i, text in enumerate(NASTY)
    ]
    schema = (
        "topic string, kafka_partition int, kafka_offset long, pipeline string, kafka_timestamp timestamp, "
        "payload binary, reasons array<string>, detail string"
    )
    return spark.createDataFrame(rows, schema)


def payload_of(df: DataFrame, columns: tuple[str, ...]) -> list[memoryview]:
    return list(copy_payload(copy_lines(df, columns).toArrow().column(LINE)))


def test_nasty_strings_bytes_arrays_and_timestamps_round_trip(spark: SparkSession, pg_url: str) -> None:
    apply_migrations(pg_url)
    sink = PostgresSink(pg_url, application_name="test")
    with sink.batch("batch 0") as batch:
        assert batch.merge(DEAD, payload_of(dead_letter_rows(spark), DEAD.columns)) == len(NASTY)
    with pg_connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT kafka_offset, detail, payload, reasons, kafka_timestamp FROM dead_letters ORDER BY 1"
        ).fetchall()
    assert [r[1] for r in rows] == NASTY
    assert [bytes(r[2]) for r in rows] == [bytes([0, 255, i]) for i in range(len(NASTY))]
    assert {tuple(r[3]) for r in rows} == {("json_object", "ip_valid")}
    assert {r[4] for r in rows} == {datetime(2026, 11, 23, 10, 0, 0, 123456, tzinfo=UTC)}
    sink.close()


def test_a_replayed_batch_changes_nothing(spark: SparkSession, pg_url: str) -> None:
    apply_migrations(pg_url)
    sink = PostgresSink(pg_url, application_name="test")
    payload = payload_of(dead_letter_rows(spark), DEAD.columns)
    for expected in (len(NASTY), 0):
        with sink.batch("batch 0") as batch:
            assert batch.merge(DEAD, payload) == expected
    sink.close()


def test_summaries_are_upserted_with_the_recomputed_values(spark: SparkSession, pg_url: str) -> None:
    apply_migrations(pg_url)
    target = MergeTarget(
        "user_activity_summary", SUMMARY_COLUMNS, key=("user_id", "window_start", "window_seconds"), update=True
    )
    schema = (
        "user_id long, window_start timestamp, window_seconds int, event_count long, distinct_products int, "
        "action_counts map<string,bigint>, first_event_ts timestamp, last_event_ts timestamp"
    )
    start = datetime(2026, 11, 23, 10, 0)
    sink = PostgresSink(pg_url, application_name="test")
    for count in (1, 3):
        df = spark.createDataFrame([(7, start, 5, count, 1, {"view": count}, start, start)], schema)
        with sink.batch("b") as batch:
            batch.merge(target, payload_of(df, target.columns))
    with pg_connect(pg_url) as conn:
        assert conn.execute("SELECT event_count, action_counts FROM user_activity_summary").fetchall() == [
            (3, {"view": 3})
        ]
    sink.close()


def test_day_partitions_are_created_before_rows_land(pg_url: str) -> None:
    apply_migrations(pg_url)
    sink = PostgresSink(pg_url, application_name="test")
    sink.ensure_day_partitions("user_events", [date(2026, 11, 23), date(2026, 11, 24), date(2026, 11, 23)])
    # Another writer (its own connection, its own cache) asking for the same day is harmless.
    PostgresSink(pg_url, application_name="other").ensure_day_partitions("user_events", [date(2026, 11, 24)])
    with pg_connect(pg_url) as conn:
        parts = conn.execute(
            "SELECT relname FROM pg_class WHERE relname LIKE 'user_events_2026%' AND relkind = 'r' ORDER BY 1"
        ).fetchall()
    assert parts == [("user_events_20261123",), ("user_events_20261124",)]
    sink.close()


def test_a_failed_write_rolls_back_and_says_what_happened(pg_url: str) -> None:
    apply_migrations(pg_url)
    sink = PostgresSink(pg_url, application_name="test")
    good = b"user_events,0,1,user_events,,,{x},\n"
    failing = pytest.raises(SinkError, match=r"(?s)writing dead_letters failed.*retried from the checkpoint")
    with failing, sink.batch("batch 9") as batch:
        batch.merge(DEAD, [good])
        batch.merge(DEAD, [b"user_events,not-a-number,1,user_events,,,{x},\n"])
    with pg_connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM dead_letters").fetchone() == (0,), "the whole batch rolled back"
    with sink.batch("batch 9 again") as batch:
        assert batch.merge(DEAD, [good]) == 1, "the sink recovers on the next batch"
    sink.close()


def test_concurrent_writers_creating_the_same_day_do_not_collide(pg_url: str) -> None:
    """Parallel partition writers all ask for the day of their rows at once."""
    apply_migrations(pg_url)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        sink = PostgresSink(pg_url, application_name=f"writer-{n}")
        barrier.wait()
        try:
            sink.ensure_day_partitions("user_events", [date(2026, 12, 1), date(2026, 12, 2)])
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)
        finally:
            sink.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors


def test_each_thread_gets_its_own_connection(pg_url: str) -> None:
    """Streaming queries call their batch functions from their own threads at the same time."""
    sink = PostgresSink(pg_url, application_name="threads")
    seen: list[int] = []
    threads = [threading.Thread(target=lambda: seen.append(id(sink.connection()))) for _ in range(3)]
    for thread in threads:
        thread.start()
        thread.join(10)
    assert len(set(seen)) == 3 and sink.connection() is sink.connection()
    sink.close()
