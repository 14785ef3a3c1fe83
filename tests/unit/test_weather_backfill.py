"""The weather backfill's pieces: exact summary sums, whole-hour ranges and chunks, its one target."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pyspark.sql import SparkSession

from spark_jobs.batch.backfill import (
    BACKFILLS,
    BackfillRequest,
    WeatherBackfill,
    backfill_pipelines,
    plan_chunks,
)
from spark_jobs.weather import transforms as T
from tributary.catalog import WEATHER, Window
from tributary.settings import REPO_ROOT

HOUR = timedelta(hours=1)
NOW = datetime(2026, 11, 23, 14, 0, tzinfo=UTC)
READINGS = "station_id string, event_ts timestamp, temperature double, humidity double, wind_speed double"


def test_summary_sums_are_the_stored_columns_per_station_and_over_all(spark: SparkSession) -> None:
    rows = [
        ("A", datetime(2026, 11, 23, 8, 10), 0.1, 50.0, 1.0),
        ("A", datetime(2026, 11, 23, 8, 59, 59), 0.2, 70.0, 3.0),
        ("B", datetime(2026, 11, 23, 8, 30), -5.5, 90.0, 5.0),
        ("A", datetime(2026, 11, 23, 9, 0), 5.0, 40.0, 2.0),
    ]
    sums = T.summary_sums(spark.createDataFrame(rows, READINGS), WEATHER.windows[0])
    assert tuple(sums.columns) == T.SUMMARY_COLUMNS
    got = {(r["station_id"], r["window_start"].hour): r.asDict() for r in sums.collect()}
    assert set(got) == {("A", 8), ("B", 8), ("*", 8), ("A", 9), ("*", 9)}
    a8 = got[("A", 8)]
    # Exact: 0.1 + 0.2 is 0.30000000000000004 in floating point.
    assert (a8["reading_count"], a8["sum_temperature"], a8["min_temperature"], a8["max_temperature"]) == (
        2,
        0.3,
        0.1,
        0.2,
    )
    assert a8["window_seconds"] == 3600 and a8["sum_humidity"] == 120.0 and a8["max_wind_speed"] == 3.0
    overall = got[("*", 8)]
    assert (overall["reading_count"], overall["sum_temperature"], overall["min_temperature"]) == (3, -5.2, -5.5)
    assert got[("*", 9)]["reading_count"] == 1  # 09:00:00 starts the next hour


def test_summary_sums_do_not_depend_on_the_order_of_the_readings(spark: SparkSession) -> None:
    values = [0.1 * i + 1e-3 for i in range(1, 200)]
    rows = [("A", datetime(2026, 11, 23, 8, 0, i % 60), v, 50.0, 1.0) for i, v in enumerate(values)]
    one = T.summary_sums(spark.createDataFrame(rows, READINGS).coalesce(1), WEATHER.windows[0])
    many = T.summary_sums(spark.createDataFrame(rows[::-1], READINGS).repartition(7), WEATHER.windows[0])
    assert sorted(one.collect()) == sorted(many.collect())


def test_summary_sums_refuse_sliding_windows(spark: SparkSession) -> None:
    readings = spark.createDataFrame([], READINGS)
    with pytest.raises(ValueError, match="tumbling window"):
        T.summary_sums(readings, Window(3600, watermark_s=600, slide_s=600))


def weather(start: datetime, end: datetime, targets: tuple[str, ...] = ("summaries",)) -> BackfillRequest:
    return BackfillRequest("weather", start, end, targets)


def test_weather_has_a_backfill_of_summaries_only() -> None:
    assert BACKFILLS["weather"] is WeatherBackfill and "weather" in backfill_pipelines()
    assert WeatherBackfill.targets == ("summaries",)
    with pytest.raises(ValueError, match="weather backfills summaries, not anomalies, es, alerts; drop them"):
        weather(NOW - 5 * HOUR, NOW - 2 * HOUR, ("summaries", "anomalies", "es", "alerts")).check(WEATHER, NOW)


def test_a_weather_range_on_whole_hours_passes_the_time_rules() -> None:
    weather(NOW - 48 * HOUR, NOW - WEATHER.batch.reconcile_delay_hours * HOUR).check(WEATHER, NOW)
    with pytest.raises(ValueError, match="may still be writing"):
        weather(NOW - 3 * HOUR, NOW).check(WEATHER, NOW)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (NOW - timedelta(hours=5, minutes=30), NOW - timedelta(hours=2)),
        (NOW - timedelta(hours=5), NOW - timedelta(hours=2, minutes=30)),
        (NOW - timedelta(hours=5, minutes=30), NOW - timedelta(hours=2, minutes=30)),
    ],
)
def test_a_weather_range_cutting_an_hour_is_refused_with_the_whole_hours_around_it(
    start: datetime, end: datetime
) -> None:
    with pytest.raises(ValueError, match="whole hours") as refused:
        weather(start, end).check(WEATHER, NOW)
    floor = start.replace(minute=0)
    ceil = end.replace(minute=0) + (HOUR if end.minute else timedelta(0))
    assert f"choose {floor.isoformat()} to {ceil.isoformat()}" in str(refused.value)


def test_hour_aligned_chunks_read_exactly_their_own_hours() -> None:
    start = datetime(2026, 11, 23, tzinfo=UTC)
    counts = {start + h * HOUR: 300 for h in range(6)}
    chunks = plan_chunks(start, start + 6 * HOUR, counts, 500, timedelta(0))
    assert [(c.lo.hour, c.hi.hour) for c in chunks] == [(0, 2), (2, 4), (4, 6)]
    for chunk in chunks:
        assert chunk.window_lo == chunk.lo
        assert chunk.read_range(timedelta(0)) == (chunk.lo, chunk.hi)


def test_the_backfill_dag_documents_every_pipeline_with_a_backfill() -> None:
    doc = (REPO_ROOT / "dags" / "tributary_backfill.py").read_text()
    assert all(f"`{name}`" in doc for name in backfill_pipelines())
