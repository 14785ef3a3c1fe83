"""weather transformations on small in-memory DataFrames (real local Spark), and the generator."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession

from spark_jobs.weather import transforms as T
from tributary.catalog import WEATHER
from tributary.producers.weather import INVALID_KINDS, ReadingMix, expected_rule, generate_readings

KAFKA_SCHEMA = (
    "key binary, value binary, topic string, partition int, offset long, timestamp timestamp, timestampType int"
)
NOW = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)
GOOD = {
    "station_id": "ST00007",
    "timestamp": "2026-11-23T09:59:58Z",
    "temperature": 12.5,
    "humidity": 71.0,
    "wind_speed": 3.2,
    "pressure": 1011.5,
    "location": "Berlin, DE",
}
HOUR = WEATHER.windows[0]


def kafka_rows(spark: SparkSession, payloads: list[bytes | None], ts: datetime = NOW) -> DataFrame:
    rows = [(None, p, "weather_data", 0, i, ts, 0) for i, p in enumerate(payloads)]
    return spark.createDataFrame(rows, KAFKA_SCHEMA)


def reading(**changes: Any) -> bytes:
    doc = {**GOOD, **changes}
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def violations_of(spark: SparkSession, payload: bytes | None) -> list[str]:
    (row,) = T.parse_readings(kafka_rows(spark, [payload]), WEATHER).collect()
    return list(row["violations"])


def test_a_good_reading_is_valid_and_typed(spark: SparkSession) -> None:
    (row,) = T.valid_readings(T.parse_readings(kafka_rows(spark, [reading()]), WEATHER)).collect()
    assert row["station_id"] == "ST00007" and row["temperature"] == 12.5 and row["pressure"] == 1011.5
    assert row["event_ts"] == datetime(2026, 11, 23, 9, 59, 58)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (None, [T.RULE_UTF8]),
        (b"\xff\xfe", [T.RULE_UTF8]),
        (reading(location="Ber\u0000lin"), [T.RULE_UTF8]),  # NUL: not storable as PostgreSQL text
        (reading(station_id="*"), [T.RULE_STATION]),  # the summary's all-stations row
        (b"{", [T.RULE_JSON]),
        (b"[1]", [T.RULE_JSON]),
        (reading(humidity=...), [T.RULE_REQUIRED]),
        (reading(pressure=..., location=...), []),  # optional fields
        (reading(humidity=100.1), [T.RULE_HUMIDITY]),
        (reading(humidity=-0.5), [T.RULE_HUMIDITY]),
        (reading(humidity=100), []),  # integer JSON numbers are numbers; bounds are inclusive
        (reading(temperature=61.0), [T.RULE_TEMPERATURE]),
        (reading(temperature=-90.0), []),
        (reading(temperature="12.5"), [T.RULE_TEMPERATURE]),  # a string is not a number
        (reading(wind_speed=-1), [T.RULE_WIND]),
        (reading(pressure="high"), [T.RULE_PRESSURE]),
        (reading(station_id="  "), [T.RULE_STATION]),
        (reading(timestamp="noon"), [T.RULE_TS_PARSE]),
        (reading(timestamp="2099-01-01T00:00:00Z"), [T.RULE_TS_FUTURE]),
        (reading(humidity=120, temperature=99), [T.RULE_TEMPERATURE, T.RULE_HUMIDITY]),
    ],
)
def test_each_rule(spark: SparkSession, payload: bytes | None, expected: list[str]) -> None:
    assert violations_of(spark, payload) == expected


def test_every_generated_invalid_kind_fails_its_rule(spark: SparkSession) -> None:
    start = NOW - timedelta(minutes=5)
    mix = ReadingMix(stations=20, invalid_share=1.0)
    generated = list(generate_readings(len(INVALID_KINDS) * 2, seed=3, start=start, readings_per_s=10, mix=mix))
    rows = T.parse_readings(kafka_rows(spark, [g.value for g in generated]), WEATHER).orderBy("kafka_offset").collect()
    for g, row in zip(generated, rows, strict=True):
        assert expected_rule(g.kind) in row["violations"], (g.kind, row["violations"])


def test_hourly_windows_per_station_and_overall(spark: SparkSession) -> None:
    payloads = [
        reading(station_id="A", timestamp="2026-11-23T08:10:00Z", temperature=10.0, humidity=50, wind_speed=1),
        reading(station_id="A", timestamp="2026-11-23T08:59:59.999Z", temperature=20.0, humidity=70, wind_speed=3),
        reading(station_id="A", timestamp="2026-11-23T09:00:00Z", temperature=5.0, humidity=40, wind_speed=2),
        reading(station_id="B", timestamp="2026-11-23T08:30:00Z", temperature=30.0, humidity=90, wind_speed=5),
    ]
    readings = T.valid_readings(T.parse_readings(kafka_rows(spark, payloads), WEATHER))
    per_station = {(r["station_id"], r["window_start"].hour): r for r in T.hourly_summary(readings, HOUR).collect()}
    a8 = per_station[("A", 8)]
    assert (a8["reading_count"], a8["avg_temperature"], a8["min_temperature"], a8["max_temperature"]) == (
        2,
        15.0,
        10.0,
        20.0,
    )
    assert a8["avg_humidity"] == 60.0 and a8["max_wind_speed"] == 3.0 and a8["window_seconds"] == 3600
    assert per_station[("A", 9)]["reading_count"] == 1  # 09:00:00 starts the next hour
    overall = {r["window_start"].hour: r for r in T.overall_summary(readings, HOUR).collect()}
    assert overall[8]["station_id"] == T.ALL_STATIONS
    assert (overall[8]["reading_count"], overall[8]["avg_temperature"]) == (3, 20.0)


def test_generator_is_deterministic_and_marks_lateness() -> None:
    mix = ReadingMix(stations=10, late_share=0.2, out_of_order_share=0.2)
    first = list(generate_readings(200, seed=9, start=NOW, readings_per_s=5, mix=mix))
    assert first == list(generate_readings(200, seed=9, start=NOW, readings_per_s=5, mix=mix))
    kinds = {g.kind for g in first}
    assert {"valid", "late", "out_of_order"} <= kinds
    for i, g in enumerate(first):
        scheduled = NOW + timedelta(seconds=i / 5)
        behind = (scheduled - g.event_time).total_seconds()
        assert behind == {"late": 1_800, "out_of_order": 240}.get(g.kind, 0)
