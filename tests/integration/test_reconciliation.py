"""Reconciliation against the real services: clean data passes; a gap, a missing document and a
wrong summary row are each reported exactly, with their keys.

The data is what the real user_events job writes for a known mix produced into a closed hour
(broker timestamps set to the event times, three hours ago), in the test's own database, topic and
indices.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import Producer
from pyspark.sql import SparkSession

from spark_jobs.batch.reconcile import Reconciler, exit_status
from tests.integration.test_user_events_job import isolated, prepare, run_job
from tributary.catalog import PLATFORM, USER_EVENTS, Pipeline
from tributary.clients import es_client, kafka_config, pg_connect
from tributary.migrations import apply_migrations
from tributary.producers.user_events import EventMix, GeneratedEvent, generate_events
from tributary.reconciliation import (
    KAFKA_RAW,
    RAW_ES,
    RAW_SUMMARIES,
    HourReport,
    ReconciliationStore,
    backfill_requests,
    check_kafka_raw,
    floor_hour,
)
from tributary.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def send_at_event_time(settings: Settings, topic: str, events: list[GeneratedEvent]) -> None:
    """Produce with each record's broker timestamp set to its event time (a past hour)."""
    producer = Producer(kafka_config(settings, **{"linger.ms": 20}))
    for event in events:
        producer.produce(topic, value=event.value, key=event.key, timestamp=int(event.event_time.timestamp() * 1000))
    assert producer.flush(30) == 0, "not every record was delivered"


def reconcile(spark: SparkSession, settings: Settings, pipeline: Pipeline, platform: Any, hour: datetime) -> HourReport:
    reconciler = Reconciler(settings, lambda: spark, platform=platform, requested_by="test")
    (report,) = reconciler.run(pipeline, [(hour, hour + timedelta(hours=1))])
    return report


def one(settings: Settings, query: str, *params: Any) -> tuple[Any, ...]:
    with pg_connect(settings.pg_url, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None, query
    return tuple(row)


def test_reconciliation_passes_on_clean_data_and_pinpoints_a_gap_a_missing_document_and_a_wrong_summary(
    spark: SparkSession, settings: Settings
) -> None:
    tag = uuid.uuid4().hex[:8]
    pipeline, platform = isolated(tag)
    prepare(settings, pipeline, platform, users=20)
    topic = pipeline.topic.name
    hour = floor_hour(datetime.now(UTC)) - timedelta(hours=3)
    hour_end = hour + timedelta(hours=1)

    # Five minutes of on-time events (10% invalid: dead letters) inside the hour, then, in a later
    # run, one event after the hour that moves the watermark past every window of the hour.
    events = list(
        generate_events(
            600, seed=21, start=hour + timedelta(minutes=20), events_per_s=2, mix=EventMix(users=20, invalid_share=0.1)
        )
    )
    clock = list(
        generate_events(1, seed=22, start=hour_end + timedelta(minutes=10), events_per_s=1, mix=EventMix(users=20))
    )
    send_at_event_time(settings, topic, events)
    run_job(spark, settings, pipeline, platform, max_offsets_per_trigger=10_000)
    send_at_event_time(settings, topic, clock)
    run_job(spark, settings, pipeline, platform)

    clean = reconcile(spark, settings, pipeline, platform, hour)
    assert clean.state == "passed", clean.summary()
    by_check: dict[str, list[Any]] = {}
    for result in clean.results:
        by_check.setdefault(result.check, []).append(result)
    assert len(by_check[KAFKA_RAW]) == pipeline.topic.partitions
    assert sum(r.actual for r in by_check[KAFKA_RAW]) == len(events)
    assert all(r.detail["committed_end"] is not None for r in by_check[KAFKA_RAW]), "heartbeats carry end offsets"
    invalid = sum(e.kind.startswith("invalid:") for e in events)
    (es,) = by_check[RAW_ES]
    assert (es.outcome, es.expected, es.actual) == ("ok", len(events) - invalid, len(events) - invalid)
    assert [r.scope for r in by_check[RAW_SUMMARIES]] == [w.name for w in pipeline.windows]
    assert all(r.outcome == "ok" and r.expected and r.expected == r.actual for r in by_check[RAW_SUMMARIES])

    # Break three things. A dead letter with a later position in its partition within the hour: its
    # offset becomes a gap charged to this hour (and nothing else changes: it is in no other sink).
    with pg_connect(settings.pg_url, autocommit=True) as conn:
        row = conn.execute(
            """DELETE FROM dead_letters WHERE (topic, kafka_partition, kafka_offset) = (
                   SELECT d.topic, d.kafka_partition, d.kafka_offset FROM dead_letters d
                   WHERE d.topic = %s AND EXISTS (
                       SELECT 1 FROM user_events e WHERE e.topic = d.topic AND e.kafka_partition = d.kafka_partition
                       AND e.kafka_offset > d.kafka_offset AND e.kafka_timestamp < %s)
                   ORDER BY d.kafka_partition, d.kafka_offset LIMIT 1)
               RETURNING kafka_partition, kafka_offset""",
            (topic, hour_end),
        ).fetchone()
        assert row is not None
        gap_partition, gap_offset = row
        row = conn.execute(
            """SELECT kafka_partition, kafka_offset, event_ts FROM user_events
               WHERE event_ts >= %s AND event_ts < %s ORDER BY event_ts DESC, kafka_offset LIMIT 1""",
            (hour, hour_end),
        ).fetchone()
        assert row is not None
        doc_partition, doc_offset, doc_ts = row
        row = conn.execute(
            """UPDATE user_activity_summary SET event_count = event_count + 1
               WHERE (user_id, window_start, window_seconds) = (
                   SELECT user_id, window_start, window_seconds FROM user_activity_summary
                   WHERE window_seconds = 5 AND window_start >= %s AND window_start < %s
                   ORDER BY window_start, user_id LIMIT 1)
               RETURNING user_id, window_start, event_count""",
            (hour, hour_end),
        ).fetchone()
        assert row is not None
        summary_user, summary_window, wrong_count = row
    doc_id = f"{topic}-{doc_partition}-{doc_offset}"
    search = es_client(settings)
    events_index = pipeline.indices["events"]
    assert search.delete(index=events_index.index_for(doc_ts.date()), id=doc_id, refresh=True)["result"] == "deleted"

    broken = reconcile(spark, settings, pipeline, platform, hour)
    assert broken.state == "failed"
    mismatches = {(r.check, r.scope): r for r in broken.mismatches}
    assert set(mismatches) == {(KAFKA_RAW, f"{topic}/{gap_partition}"), (RAW_ES, es.scope), (RAW_SUMMARIES, "5s")}, (
        broken.summary()
    )

    gap = mismatches[(KAFKA_RAW, f"{topic}/{gap_partition}")]
    assert gap.detail["gaps"] == [[gap_offset, gap_offset]] and gap.detail["missing"] == 1
    assert gap.detail["duplicates"] == 0 and gap.expected == gap.actual + 1
    assert gap.backfill is None, "Kafka gaps cannot be repaired from raw"

    missing_doc = mismatches[(RAW_ES, es.scope)]
    assert missing_doc.detail["missing_ids"] == [doc_id] and missing_doc.detail["surplus_ids"] == []
    assert (missing_doc.expected, missing_doc.actual) == (es.expected, es.expected - 1)
    minute = doc_ts.replace(second=0, microsecond=0)
    assert missing_doc.backfill is not None
    assert (missing_doc.backfill.target, missing_doc.backfill.start) == ("es", minute)

    window = mismatches[(RAW_SUMMARIES, "5s")]
    assert (window.detail["differs"], window.detail["missing"], window.detail["surplus"]) == (1, 0, 0)
    (listed,) = window.detail["windows"]
    assert listed["user_id"] == summary_user and listed["kind"] == "differs"
    assert datetime.fromisoformat(listed["window_start"]) == summary_window
    assert listed["fields"] == {"event_count": {"recomputed": wrong_count - 1, "stored": wrong_count}}
    assert window.backfill is not None
    assert (window.backfill.start, window.backfill.end) == (summary_window, summary_window + timedelta(seconds=5))

    summary = broken.summary()
    assert f"{gap_offset}" in summary and doc_id in summary and f"user {summary_user}" in summary
    assert exit_status([clean, broken]) == 1

    # Stored: the newest run of the hour is the failed one, with its results and what to backfill.
    with pg_connect(settings.pg_url, autocommit=True) as conn:
        (run,) = ReconciliationStore(conn, platform).runs_requested_by("test")
    assert (run.state, run.hour_start, run.backfill_triggered) == ("failed", hour, False)
    assert run.summary == summary
    assert {(r.check, r.scope) for r in run.results if r.mismatch} == set(mismatches)
    assert [(b.target, b.start, b.end) for b in backfill_requests([(run.id, run.pipeline, run.results)])] == [
        ("es", minute, minute + timedelta(minutes=1)),
        ("summaries", summary_window, summary_window + timedelta(seconds=5)),
    ]
    assert one(settings, "SELECT count(*) FROM reconciliation_runs WHERE state = 'passed'") == (1,)


def test_the_kafka_check_finds_gaps_and_surplus_as_offset_ranges_in_sql(pg_url: str) -> None:
    """Hand-placed positions of one partition: gaps inside the hour, at its start (after a position
    of the previous hour) and after the last stored offset; positions stored as raw *and* dead letter."""
    apply_migrations(pg_url)
    hour = datetime(2026, 11, 23, 10, tzinfo=UTC)
    topic, partition = USER_EVENTS.topic.name, 0
    # Offset 0-1 in the previous hour; the hour holds 4-20 without 6-7 and 15, 10-11 are also dead
    # letters; the job committed up to 25, so 21-24 are consumed but not stored.
    raw = [0, 1, 4, 5, *range(8, 15), *range(16, 21)]
    dead = [10, 11]
    with pg_connect(pg_url, autocommit=True) as conn:
        conn.execute("SELECT ensure_day_partition('user_events', %s)", (hour.date(),))
        for offset in raw:
            at = hour - timedelta(minutes=5) if offset < 2 else hour + timedelta(minutes=offset)
            conn.execute(
                "INSERT INTO user_events (topic, kafka_partition, kafka_offset, kafka_timestamp, event_ts, user_id, "
                "product_id, action) VALUES (%s, %s, %s, %s, %s, 1, 1, 'view')",
                (topic, partition, offset, at, at),
            )
        for offset in dead:
            conn.execute(
                "INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, pipeline, kafka_timestamp, reasons) "
                "VALUES (%s, %s, %s, 'user_events', %s, '{json_object}')",
                (topic, partition, offset, hour + timedelta(minutes=offset)),
            )
        (result,) = check_kafka_raw(
            conn,
            USER_EVENTS,
            hour,
            hour + timedelta(hours=1),
            log_starts={partition: 0},
            committed_ends={partition: 25},
        )
        (previous,) = check_kafka_raw(
            conn,
            USER_EVENTS,
            hour - timedelta(hours=1),
            hour,
            log_starts={partition: 0},
            committed_ends={partition: 25},
        )
    assert result.mismatch
    assert result.detail["gaps"] == [[2, 3], [6, 7], [15, 15], [21, 24]]
    assert result.detail["surplus"] == [[10, 11]] and result.detail["duplicates"] == 2
    assert (result.detail["missing"], result.detail["raw_rows"], result.detail["dead_letters"]) == (9, 14, 2)
    # Offsets 2-24 are this hour's: 14 distinct stored + 9 missing; 16 records stored (2 twice).
    assert (result.expected, result.actual) == (23, 16)
    assert "9 offsets consumed but not stored, offsets 2-3, 6-7, 15, 21-24" in result.message
    # The previous hour's positions 0-1 are complete; the gap after them is charged to the next hour.
    assert previous.outcome == "ok" and (previous.expected, previous.actual) == (2, 2)


def test_the_kafka_check_reports_recorded_lost_ranges_instead_of_gaps(pg_url: str) -> None:
    """Offsets the job recorded as lost (retention deleted them unread) are no gap: the hour
    reports them as lost ranges; an unrecorded rest of a gap stays a gap."""
    apply_migrations(pg_url)
    hour = datetime(2026, 11, 23, 10, tzinfo=UTC)
    topic, partition = USER_EVENTS.topic.name, 0
    # Stored: 0-4, 10-14, 20-24 (committed up to 25). Recorded lost: [5, 10) twice over (two
    # overlapping rows), [15, 18) of the gap 15-19; a range of unknown end (a replaced log) and
    # another topic's range, neither of which is this hour's.
    stored = [*range(5), *range(10, 15), *range(20, 25)]
    lost = [
        (topic, partition, 5, 10),
        (topic, partition, 6, 8),
        (topic, partition, 15, 18),
        (topic, partition, 100, None),
        ("other_topic", partition, 0, 30),
    ]
    with pg_connect(pg_url, autocommit=True) as conn:
        conn.execute("SELECT ensure_day_partition('user_events', %s)", (hour.date(),))
        for offset in stored:
            at = hour + timedelta(minutes=offset)
            conn.execute(
                "INSERT INTO user_events (topic, kafka_partition, kafka_offset, kafka_timestamp, event_ts, user_id, "
                "product_id, action) VALUES (%s, %s, %s, %s, %s, 1, 1, 'view')",
                (topic, partition, offset, at, at),
            )
        for lost_topic, lost_partition, first, end in lost:
            conn.execute(
                f"INSERT INTO {PLATFORM.lost_ranges_table} (job_name, topic, kafka_partition, from_offset, to_offset, "
                "reason) VALUES ('user_events', %s, %s, %s, %s, 'deleted (retention) before they were read')",
                (lost_topic, lost_partition, first, end),
            )
        (result,) = check_kafka_raw(
            conn,
            USER_EVENTS,
            hour,
            hour + timedelta(hours=1),
            log_starts={partition: 0},
            committed_ends={partition: 25},
        )
    assert result.mismatch
    assert result.detail["gaps"] == [[18, 19]] and result.detail["missing"] == 2
    assert result.detail["lost"] == 8
    assert result.detail["lost_ranges"] == [{"from_offset": 5, "to_offset": 10}, {"from_offset": 15, "to_offset": 18}]
    assert (result.expected, result.actual) == (17, 15)
    assert result.message.startswith(
        "2 offsets consumed but not stored, offsets 18-19; 8 offsets deleted by Kafka retention before the job "
        "read them, recorded lost ranges [5, 10), [15, 18); 15 of 17 positions stored"
    )
    assert result.fix is not None and PLATFORM.lost_ranges_table in result.fix
