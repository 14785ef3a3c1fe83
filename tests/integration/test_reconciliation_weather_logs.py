"""Reconciliation of the weather and app_logs pipelines against the real services.

The real weather and app_logs jobs write a known mix into a closed hour (three hours ago, broker
timestamps set to the event times, in the test's own database, topics and indices); the hour's
reconciliation passes (weather's raw <-> Elasticsearch check skipped with its reason), and each
damaged sink makes exactly the checks that compare it fail, naming the window, offset or id.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import Producer
from pyspark.sql import SparkSession

from spark_jobs.batch.backfill import LATE_READINGS, SUMMARIES, BackfillRequest, run_backfill
from spark_jobs.batch.reconcile import Reconciler, backfill_targets
from tests.integration import test_app_logs_job, test_weather_job
from tests.integration.streaming_fixtures import isolated, prepare, scalar
from tributary.catalog import APP_LOGS, WEATHER, Pipeline, PlatformNames
from tributary.clients import es_client, kafka_config, pg_connect
from tributary.producers.app_logs import LogMix, generate_log_lines
from tributary.producers.user_events import GeneratedEvent
from tributary.producers.weather import ReadingMix, generate_readings
from tributary.reconciliation import (
    KAFKA_RAW,
    RAW_ES,
    RAW_SUMMARIES,
    CheckResult,
    HourReport,
    ReconciliationStore,
    backfill_requests,
    floor_hour,
)
from tributary.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOUR = timedelta(hours=1)


def send_at(settings: Settings, topic: str, events: Iterable[GeneratedEvent], broker_time: datetime | None) -> int:
    """Produce with broker timestamps at each record's event time, or all at `broker_time` (when
    late records arrive); returns how many were sent."""
    producer = Producer(kafka_config(settings, **{"linger.ms": 20}))
    sent = 0
    for event in events:
        at = event.event_time if broker_time is None else broker_time
        producer.produce(topic, value=event.value, key=event.key, timestamp=int(at.timestamp() * 1000))
        sent += 1
    assert producer.flush(30) == 0, "not every record was delivered"
    return sent


def reconcile(settings: Settings, pipeline: Pipeline, platform: PlatformNames, hour: datetime) -> HourReport:
    reconciler = Reconciler(settings, no_spark, platform=platform, requested_by="test")
    (report,) = reconciler.run(pipeline, [(hour, hour + HOUR)])
    assert report.error is None, report.summary()
    return report


def by_check(report: HourReport) -> dict[str, list[CheckResult]]:
    found: dict[str, list[CheckResult]] = {}
    for result in report.results:
        found.setdefault(result.check, []).append(result)
    return found


def mismatched(report: HourReport) -> dict[tuple[str, str], CheckResult]:
    return {(r.check, r.scope): r for r in report.mismatches}


def execute(settings: Settings, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    with pg_connect(settings.pg_url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return [tuple(r) for r in cursor.fetchall()] if cursor.description else []


# A raw row of the hour (by broker time) with raw rows of the hour before and after it in its
# partition, so its loss is a gap inside the hour: (partition, offset, event_ts).
_INNER_RAW_POSITION = """
SELECT r.kafka_partition, r.kafka_offset, r.event_ts FROM {raw} r
WHERE r.topic = %(topic)s AND r.kafka_timestamp >= %(start)s AND r.kafka_timestamp < %(end)s
  AND EXISTS (SELECT 1 FROM {raw} n WHERE n.topic = r.topic AND n.kafka_partition = r.kafka_partition
              AND n.kafka_offset > r.kafka_offset AND n.kafka_timestamp >= %(start)s AND n.kafka_timestamp < %(end)s)
  AND EXISTS (SELECT 1 FROM {raw} p WHERE p.topic = r.topic AND p.kafka_partition = r.kafka_partition
              AND p.kafka_offset < r.kafka_offset AND p.kafka_timestamp >= %(start)s AND p.kafka_timestamp < %(end)s)
ORDER BY r.kafka_partition, r.kafka_offset LIMIT 1
"""


def inner_raw_position(settings: Settings, raw: str, topic: str, start: datetime) -> tuple[int, int, datetime]:
    with pg_connect(settings.pg_url, autocommit=True) as conn:
        row = conn.execute(
            _INNER_RAW_POSITION.format(raw=raw), {"topic": topic, "start": start, "end": start + HOUR}
        ).fetchone()
    assert row is not None, f"no raw row of {raw} between two others of its partition"
    return int(row[0]), int(row[1]), row[2]


def no_spark() -> SparkSession:
    raise AssertionError("weather and app_logs are reconciled in SQL: the reconciler must not start Spark")


def test_weather_hour_passes_then_a_wrong_summary_and_a_lost_reading_are_pinpointed(
    spark: SparkSession, settings: Settings
) -> None:
    pipeline, platform = isolated(WEATHER, uuid.uuid4().hex[:8])
    prepare(settings, pipeline, platform)
    topic = pipeline.topic.name
    hour = floor_hour(datetime.now(UTC)) - 3 * HOUR
    hour_end = hour + HOUR
    assert backfill_targets(pipeline) == (SUMMARIES,)

    # 30 minutes of readings inside the hour (10% invalid: dead letters), then, in a later run,
    # readings of the same hour arriving an hour later: behind the watermark (newest minus 10
    # minutes), so late, kept in raw and in the late-readings table, out of the summary.
    on_time = list(
        generate_readings(
            900, seed=31, start=hour + timedelta(minutes=20), readings_per_s=0.5, mix=ReadingMix(stations=15)
        )
    )
    on_time = [
        *on_time,
        *generate_readings(
            100,
            seed=32,
            start=hour + timedelta(minutes=21),
            readings_per_s=2,
            mix=ReadingMix(stations=15, invalid_share=0.5),
        ),
    ]
    late = list(
        generate_readings(
            40, seed=33, start=hour + timedelta(minutes=5), readings_per_s=0.1, mix=ReadingMix(stations=15)
        )
    )
    send_at(settings, topic, on_time, None)
    test_weather_job.run_job(spark, settings, pipeline, platform)
    send_at(settings, topic, late, hour_end + timedelta(minutes=15))
    test_weather_job.run_job(spark, settings, pipeline, platform)
    assert scalar(settings, "SELECT count(*) FROM weather_late_readings WHERE folded_at IS NULL") == len(late)

    started = time.monotonic()
    clean = reconcile(settings, pipeline, platform, hour)
    elapsed = time.monotonic() - started
    assert clean.state == "passed", clean.summary()
    checks = by_check(clean)
    assert len(checks[KAFKA_RAW]) == pipeline.topic.partitions
    # The late readings arrived in the next hour (broker time): this hour's positions are the on-time run's.
    assert sum(r.actual or 0 for r in checks[KAFKA_RAW]) == len(on_time)
    assert all(r.detail["committed_end"] is not None for r in checks[KAFKA_RAW]), "the readings query's end offsets"
    assert sum(r.detail["dead_letters"] for r in checks[KAFKA_RAW]) > 0
    (es,) = checks[RAW_ES]
    assert es.outcome == "skipped" and "no Elasticsearch document per raw row" in es.message
    (summaries,) = checks[RAW_SUMMARIES]
    stations = scalar(
        settings,
        """SELECT count(DISTINCT station_id) FROM weather_readings r WHERE NOT EXISTS (
               SELECT 1 FROM weather_late_readings l
               WHERE (l.kafka_partition, l.kafka_offset) = (r.kafka_partition, r.kafka_offset))""",
    )
    assert (summaries.scope, summaries.outcome) == ("3600s", "ok")
    assert summaries.expected == summaries.actual == stations + 1, summaries.message
    assert summaries.detail["unfolded_late"] == len(late)
    assert f"{len(late)} late readings not folded yet are left out" in summaries.message
    assert "relative tolerance of 1e-09" in summaries.detail["tolerance"]
    assert elapsed < 30, f"the weather hour took {elapsed:.1f}s to reconcile"

    # A wrong summary row: only raw_summaries fails, naming that station's window; the repair is
    # the weather backfill of the whole hour.
    station, wrong = execute(
        settings,
        """UPDATE weather_summary SET reading_count = reading_count + 1, max_temperature = max_temperature + 0.5
           WHERE (station_id, window_start) = (
               SELECT station_id, window_start FROM weather_summary
               WHERE station_id <> '*' AND window_start = %s ORDER BY station_id LIMIT 1)
           RETURNING station_id, reading_count""",
        hour,
    )[0]
    broken = reconcile(settings, pipeline, platform, hour)
    assert set(mismatched(broken)) == {(RAW_SUMMARIES, "3600s")}, broken.summary()
    result = mismatched(broken)[(RAW_SUMMARIES, "3600s")]
    (listed,) = result.detail["windows"]
    assert (listed["station_id"], listed["kind"], datetime.fromisoformat(listed["window_start"])) == (
        station,
        "differs",
        hour,
    )
    assert set(listed["fields"]) == {"reading_count", "max_temperature"}
    assert listed["fields"]["reading_count"] == {"recomputed": wrong - 1, "stored": wrong}
    assert f"station {station} window {hour:%Y-%m-%d %H:%M}: reading_count {wrong - 1} recomputed" in result.message
    assert result.backfill is not None and (result.backfill.target, result.backfill.start, result.backfill.end) == (
        SUMMARIES,
        hour,
        hour_end,
    )
    assert f"backfill needed: summaries {hour:%Y-%m-%d %H:%M}-{hour_end:%H:%M}" in broken.summary()
    with pg_connect(settings.pg_url, autocommit=True) as conn:
        (run,) = [r for r in ReconciliationStore(conn, platform).runs_requested_by("test") if r.hour_start == hour]
    assert [(b.target, b.start, b.end) for b in backfill_requests([(run.id, run.pipeline, run.results)])] == [
        (SUMMARIES, hour, hour_end)
    ]

    # The backfill that reconciliation asks for repairs the row and folds the late readings in;
    # the hour then passes with every reading counted.
    request = BackfillRequest(pipeline.name, hour, hour_end, (SUMMARIES,), requested_by="test")
    report = run_backfill(spark, settings, request, pipeline=pipeline, platform=platform)
    assert report.targets[LATE_READINGS].changed == len(late)
    repaired = reconcile(settings, pipeline, platform, hour)
    assert repaired.state == "passed", repaired.summary()
    (summaries,) = by_check(repaired)[RAW_SUMMARIES]
    assert summaries.detail["unfolded_late"] == 0 and "late readings" not in summaries.message

    # A lost raw reading: its offset is a gap of its partition, and its station's window and the
    # window over all stations count one reading more than raw holds.
    partition, offset, event_ts = inner_raw_position(settings, "weather_readings", topic, hour)
    (lost_station,) = execute(
        settings,
        "DELETE FROM weather_readings WHERE topic = %s AND kafka_partition = %s AND kafka_offset = %s "
        "RETURNING station_id",
        topic,
        partition,
        offset,
    )[0]
    lost = reconcile(settings, pipeline, platform, hour)
    assert set(mismatched(lost)) == {(KAFKA_RAW, f"{topic}/{partition}"), (RAW_SUMMARIES, "3600s")}, lost.summary()
    gap = mismatched(lost)[(KAFKA_RAW, f"{topic}/{partition}")]
    assert gap.detail["gaps"] == [[offset, offset]] and gap.detail["missing"] == 1 and gap.backfill is None
    windows = mismatched(lost)[(RAW_SUMMARIES, "3600s")].detail["windows"]
    assert {(w["station_id"], w["kind"]) for w in windows} == {(lost_station, "differs"), ("*", "differs")}
    for w in windows:
        counts = w["fields"]["reading_count"]
        assert counts["recomputed"] == counts["stored"] - 1
        assert datetime.fromisoformat(w["window_start"]) == floor_hour(event_ts)


def test_app_logs_hour_passes_then_a_lost_document_a_stale_minute_and_a_lost_line_are_pinpointed(
    spark: SparkSession, settings: Settings
) -> None:
    pipeline, platform = isolated(APP_LOGS, uuid.uuid4().hex[:8])
    prepare(settings, pipeline, platform)
    topic = pipeline.topic.name
    hour = floor_hour(datetime.now(UTC)) - 3 * HOUR
    hour_end = hour + HOUR
    assert backfill_targets(pipeline) == ()

    # Eight minutes of traffic inside the hour: both formats, error bursts, malformed lines.
    mix = LogMix(invalid_share=0.1, error_burst_share=0.05, json_share=0.4)
    lines = list(generate_log_lines(1_000, seed=41, start=hour + timedelta(minutes=30), lines_per_s=2, mix=mix))
    send_at(settings, topic, lines, None)
    test_app_logs_job.run_job(spark, settings, pipeline, platform)
    valid = sum(not e.kind.startswith("invalid:") for e in lines)
    index = pipeline.indices["logs"]
    search = es_client(settings)
    search.indices.refresh(index=index.pattern)

    started = time.monotonic()
    clean = reconcile(settings, pipeline, platform, hour)
    elapsed = time.monotonic() - started
    assert clean.state == "passed", clean.summary()
    checks = by_check(clean)
    assert len(checks[KAFKA_RAW]) == pipeline.topic.partitions
    assert sum(r.actual or 0 for r in checks[KAFKA_RAW]) == len(lines)
    assert all(r.detail["committed_end"] is not None for r in checks[KAFKA_RAW]), "the logs query's end offsets"
    (es,) = checks[RAW_ES]
    assert (es.outcome, es.expected, es.actual, es.detail["index"]) == ("ok", valid, valid, index.pattern)
    (stats,) = checks[RAW_SUMMARIES]
    stored_rows = scalar(settings, "SELECT count(*) FROM app_log_minute_stats")
    assert (stats.scope, stats.outcome, stats.expected, stats.actual) == ("60s", "ok", stored_rows, stored_rows)
    assert scalar(settings, "SELECT count(*) FROM app_log_minute_stats WHERE method = '*'") == 9
    assert elapsed < 30, f"the app_logs hour took {elapsed:.1f}s to reconcile"

    # A lost document: only raw_es fails, with its id; no backfill writes app_logs documents, so
    # the summary says what to do instead.
    doc_partition, doc_offset, doc_ts = execute(
        settings,
        "SELECT kafka_partition, kafka_offset, event_ts FROM app_log_events ORDER BY event_ts DESC, kafka_offset LIMIT 1",
    )[0]
    doc_id = f"{topic}-{doc_partition}-{doc_offset}"
    doc_index = index.index_for(doc_ts.astimezone(UTC).date())
    document = search.get(index=doc_index, id=doc_id)["_source"]
    assert search.delete(index=doc_index, id=doc_id, refresh=True)["result"] == "deleted"
    broken = reconcile(settings, pipeline, platform, hour)
    assert set(mismatched(broken)) == {(RAW_ES, es.scope)}, broken.summary()
    missing = mismatched(broken)[(RAW_ES, es.scope)]
    assert missing.detail["missing_ids"] == [doc_id] and missing.detail["surplus_ids"] == []
    assert missing.backfill is None and missing.fix is not None and index.pattern in missing.fix
    assert f"to fix by hand: {missing.fix}" in broken.summary() and "backfill needed" not in broken.summary()
    search.index(index=doc_index, id=doc_id, document=document, refresh=True)

    # A stale minute: only raw_summaries fails, naming the endpoint and minute; the fix is the
    # reconcile job's SQL recomputation, after which the hour passes.
    minute, method, path, requests = execute(
        settings,
        """UPDATE app_log_minute_stats SET requests = requests + 2
           WHERE (minute_start, method, path_template) = (
               SELECT minute_start, method, path_template FROM app_log_minute_stats
               WHERE method <> '*' ORDER BY minute_start, requests DESC, method, path_template LIMIT 1)
           RETURNING minute_start, method, path_template, requests""",
    )[0]
    stale = reconcile(settings, pipeline, platform, hour)
    assert set(mismatched(stale)) == {(RAW_SUMMARIES, "60s")}, stale.summary()
    result = mismatched(stale)[(RAW_SUMMARIES, "60s")]
    (listed,) = result.detail["windows"]
    assert (listed["method"], listed["path_template"], listed["kind"]) == (method, path, "differs")
    assert datetime.fromisoformat(listed["minute_start"]) == minute
    assert listed["fields"] == {"requests": {"recomputed": requests - 2, "stored": requests}}
    assert f"{method} {path} minute {minute.astimezone(UTC):%Y-%m-%d %H:%M}" in result.message
    assert result.backfill is None and result.fix is not None and "--recompute-summaries" in result.fix
    assert backfill_requests([(1, pipeline.name, stale.results)]) == []
    reconciler = Reconciler(settings, no_spark, platform=platform, requested_by="test")
    (line,) = reconciler.recompute_summaries(pipeline, [(hour, hour_end)])
    assert f"{stored_rows} rows replaced by {stored_rows}" in line
    assert reconcile(settings, pipeline, platform, hour).state == "passed"

    # A lost raw line: a gap at its offset, its document is no longer backed by raw, and its
    # minute (endpoint and all requests) counts one request more than raw holds.
    partition, offset, event_ts = inner_raw_position(settings, "app_log_events", topic, hour)
    lost_id = f"{topic}-{partition}-{offset}"
    (lost_method, lost_path) = execute(
        settings,
        "DELETE FROM app_log_events WHERE topic = %s AND kafka_partition = %s AND kafka_offset = %s "
        "RETURNING method, path_template",
        topic,
        partition,
        offset,
    )[0]
    lost = reconcile(settings, pipeline, platform, hour)
    assert set(mismatched(lost)) == {
        (KAFKA_RAW, f"{topic}/{partition}"),
        (RAW_ES, es.scope),
        (RAW_SUMMARIES, "60s"),
    }, lost.summary()
    assert mismatched(lost)[(KAFKA_RAW, f"{topic}/{partition}")].detail["gaps"] == [[offset, offset]]
    assert mismatched(lost)[(RAW_ES, es.scope)].detail["surplus_ids"] == [lost_id]
    windows = mismatched(lost)[(RAW_SUMMARIES, "60s")].detail["windows"]
    lost_minute = event_ts.replace(second=0, microsecond=0)
    assert {(w["method"], w["path_template"]) for w in windows} == {(lost_method, lost_path), ("*", "*")}
    for w in windows:
        assert datetime.fromisoformat(w["minute_start"]) == lost_minute
        if w["kind"] == "differs":
            assert w["fields"]["requests"]["recomputed"] == w["fields"]["requests"]["stored"] - 1
        else:  # the endpoint's only request of that minute: its row has nothing in raw left
            assert (w["kind"], w["fields"]["requests"]["stored"]) == ("surplus", 1)
    # The recomputation also removes rows that no raw row supports any more.
    reconciler.recompute_summaries(pipeline, [(hour, hour_end)])
    after = reconcile(settings, pipeline, platform, hour)
    assert set(mismatched(after)) == {(KAFKA_RAW, f"{topic}/{partition}"), (RAW_ES, es.scope)}, after.summary()
