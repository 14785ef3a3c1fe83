"""The weather backfill folds late readings in: summaries from every raw reading, late ones marked folded.

The real weather job (real broker, PostgreSQL, Spark in local mode) leaves the state it leaves in
production: three batches, the later two with readings behind the watermark, kept in the raw and
late-readings tables but not in the summary. The backfill of the first two hours must then make
those hours' summaries equal a recomputation over all their raw readings, mark exactly their late
readings folded and nothing else, write nothing the second time, and nothing at all in a dry run.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pyspark.sql import SparkSession

from spark_jobs.batch.backfill import LATE_READINGS, SUMMARIES, BackfillReport, BackfillRequest, run_backfill
from tests.integration.streaming_fixtures import isolated, prepare, scalar, send
from tests.integration.test_weather_job import SUMMARY_DIFFERENCES, run_job
from tributary.catalog import WEATHER, Pipeline, PlatformNames
from tributary.clients import pg_connect
from tributary.producers.weather import ReadingMix, generate_readings
from tributary.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOUR = timedelta(hours=1)
STATIONS = 12


def execute(settings: Settings, statement: str, *params: Any) -> int:
    with pg_connect(settings.pg_url) as conn:
        return conn.execute(statement, params).rowcount


def snapshot(settings: Settings) -> dict[str, list[tuple[Any, ...]]]:
    """Both tables the backfill writes, write times included (a no-op must not even touch a row)."""
    with pg_connect(settings.pg_url) as conn:
        return {
            "summary": conn.execute("SELECT * FROM weather_summary ORDER BY station_id, window_start").fetchall(),
            "late": conn.execute(
                "SELECT * FROM weather_late_readings ORDER BY topic, kafka_partition, kafka_offset"
            ).fetchall(),
        }


def counts(report: BackfillReport) -> dict[str, tuple[int, int, int]]:
    return {name: (c.new, c.changed, c.unchanged) for name, c in report.targets.items()}


def send_and_run(
    spark: SparkSession,
    settings: Settings,
    pipeline: Pipeline,
    platform: PlatformNames,
    *,
    count: int,
    seed: int,
    start: datetime,
    late_share: float = 0.0,
) -> None:
    mix = ReadingMix(stations=STATIONS, late_share=late_share)
    send(
        settings,
        pipeline.topic.name,
        list(generate_readings(count, seed=seed, start=start, readings_per_s=0.5, mix=mix)),
    )
    run_job(spark, settings, pipeline, platform)


@pytest.mark.timeout(900)
def test_backfill_folds_the_late_readings_of_its_hours_and_reruns_as_a_no_op(
    spark: SparkSession, settings: Settings
) -> None:
    pipeline, platform = isolated(WEATHER, uuid.uuid4().hex[:8])
    prepare(settings, pipeline, platform)
    hour = (datetime.now(UTC) - 4 * HOUR).replace(minute=0, second=0, microsecond=0)

    # Three batches, readings 2 s apart. 1: [-30 min, +50 min) around `hour`, all on time.
    # 2: [+50, +90), a fifth sent 30 minutes behind: those before +40 (the watermark) are late, in
    # `hour`. 3: [+90, +100), late ones 30 minutes behind the watermark of +80: in the next hour.
    send_and_run(spark, settings, pipeline, platform, count=2_400, seed=31, start=hour - timedelta(minutes=30))
    send_and_run(
        spark, settings, pipeline, platform, count=1_200, seed=32, start=hour + timedelta(minutes=50), late_share=0.2
    )
    send_and_run(
        spark, settings, pipeline, platform, count=300, seed=33, start=hour + timedelta(minutes=90), late_share=0.3
    )
    start, end = hour - HOUR, hour + HOUR
    late_in_range = scalar(
        settings, "SELECT count(*) FROM weather_late_readings WHERE event_ts >= %s AND event_ts < %s", start, end
    )
    late_after = scalar(settings, "SELECT count(*) FROM weather_late_readings WHERE event_ts >= %s", end)
    assert late_in_range > 20 and late_after > 20
    assert scalar(settings, "SELECT count(*) FROM weather_late_readings WHERE event_ts < %s", hour) == 0
    assert scalar(settings, SUMMARY_DIFFERENCES) == 0, "the job's summary holds every reading but the late ones"
    # Every station with a late reading in `hour` already has an on-time one there (a row to change).
    late_stations = scalar(
        settings,
        "SELECT count(DISTINCT station_id) FROM weather_late_readings l WHERE event_ts >= %s AND event_ts < %s "
        "AND EXISTS (SELECT 1 FROM weather_summary s WHERE s.station_id = l.station_id AND s.window_start = %s)",
        hour,
        end,
        hour,
    )
    assert late_stations == scalar(
        settings,
        "SELECT count(DISTINCT station_id) FROM weather_late_readings WHERE event_ts >= %s AND event_ts < %s",
        hour,
        end,
    )
    windows = scalar(
        settings, "SELECT count(*) FROM weather_summary WHERE window_start >= %s AND window_start < %s", start, end
    )
    stored_before = snapshot(settings)

    # Damage in the first hour (no late readings there): a row gone, a row wrong, and a row whose
    # sum is a few ulps off (as floating sums added in another order come out): left alone.
    first_hour_rows = "SELECT station_id FROM weather_summary WHERE window_start = %s AND station_id <> '*' ORDER BY 1"
    with pg_connect(settings.pg_url) as conn:
        gone, wrong, ulps = (row[0] for row in conn.execute(first_hour_rows, (start,)).fetchall()[:3])
    assert (
        execute(settings, "DELETE FROM weather_summary WHERE station_id = %s AND window_start = %s", gone, start) == 1
    )
    assert execute(
        settings,
        "UPDATE weather_summary SET max_humidity = max_humidity + 1 WHERE station_id = %s AND window_start = %s",
        wrong,
        start,
    )
    assert execute(
        settings,
        "UPDATE weather_summary SET sum_temperature = sum_temperature * (1 + 1e-13) "
        "WHERE station_id = %s AND window_start = %s",
        ulps,
        start,
    )
    # A late-table row whose reading the backfill does not read (as one committed after its hour
    # was read): only late readings that were summed are folded.
    execute(
        settings,
        "INSERT INTO weather_late_readings (topic, kafka_partition, kafka_offset, event_ts, station_id, watermark) "
        "VALUES ('elsewhere', 0, 1, %s, 'ST00001', %s)",
        hour + timedelta(minutes=5),
        hour + timedelta(minutes=40),
    )
    damaged = snapshot(settings)
    assert damaged != stored_before

    def backfill(dry_run: bool = False) -> BackfillReport:
        request = BackfillRequest(pipeline.name, start, end, (SUMMARIES,), dry_run=dry_run, requested_by="test")
        return run_backfill(spark, settings, request, pipeline=pipeline, platform=platform, rows_per_chunk=500)

    expected = {
        # new: the deleted row; changed: the wrong row, and in `hour` the stations with late
        # readings and the row over all stations; every other row of the range is unchanged.
        SUMMARIES: (1, 1 + late_stations + 1, windows - 1 - (1 + late_stations + 1)),
        LATE_READINGS: (0, late_in_range, 0),
    }

    dry = backfill(dry_run=True)
    assert dry.state == "succeeded" and counts(dry) == expected
    assert snapshot(settings) == damaged, "a dry run writes nothing"

    report = backfill()
    assert report.state == "succeeded" and report.chunks == 2, "hour-aligned chunks of about 500 readings"
    assert (
        report.rows_read
        == report.rows_planned
        == scalar(settings, "SELECT count(*) FROM weather_readings WHERE event_ts >= %s AND event_ts < %s", start, end)
    )
    assert counts(report) == expected
    assert report.written == expected[SUMMARIES][0] + expected[SUMMARIES][1] + late_in_range

    # The summary now holds every reading of the range, late ones included; later hours still
    # leave their (unfolded) late readings out.
    assert scalar(settings, SUMMARY_DIFFERENCES) == 0
    assert scalar(
        settings, "SELECT reading_count FROM weather_summary WHERE station_id = '*' AND window_start = %s", hour
    ) == scalar(settings, "SELECT count(*) FROM weather_readings WHERE event_ts >= %s AND event_ts < %s", hour, end)
    assert (
        scalar(
            settings,
            "SELECT count(*) FROM weather_late_readings WHERE folded_at IS NOT NULL AND event_ts >= %s AND event_ts < %s",
            start,
            end,
        )
        == late_in_range
    )
    assert (
        scalar(settings, "SELECT count(*) FROM weather_late_readings WHERE folded_at IS NULL AND event_ts >= %s", end)
        == late_after
    )
    assert scalar(settings, "SELECT folded_at FROM weather_late_readings WHERE topic = 'elsewhere'") is None

    # The row a few ulps off was within the tolerance: not rewritten (write time included).
    def row_of(rows: list[tuple[Any, ...]], station: str) -> tuple[Any, ...]:
        return next(row for row in rows if row[0] == station and row[2] == start)

    assert row_of(snapshot(settings)["summary"], ulps) == row_of(damaged["summary"], ulps)
    # Rows outside the range (the hour after it) are as the job left them.
    later = [row for row in stored_before["summary"] if row[2] >= end]
    assert later and later == [row for row in snapshot(settings)["summary"] if row[2] >= end]

    # A rerun finds everything in place and writes nothing, not even a write time.
    folded = snapshot(settings)
    again = backfill()
    assert again.written == 0, counts(again)
    assert counts(again) == {SUMMARIES: (0, 0, windows), LATE_READINGS: (0, 0, 0)}
    assert snapshot(settings) == folded

    # Every run is on record, with its counts.
    with pg_connect(settings.pg_url) as conn:
        runs = conn.execute(
            "SELECT state, dry_run, rows_read, targets, requested_by, finished_at IS NOT NULL, "
            "(written->'late_readings'->>'changed')::int FROM backfill_runs ORDER BY id"
        ).fetchall()
    assert runs == [
        ("succeeded", dry_run, report.rows_read, ["summaries"], "test", True, late)
        for dry_run, late in ((True, late_in_range), (False, late_in_range), (False, 0))
    ]
