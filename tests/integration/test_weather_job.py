"""The weather job end to end: exact counts in every sink, late readings accounted, replays, kills.

Real broker (Tansu), real PostgreSQL, real Spark in local mode. Summaries are checked against a
recomputation from the raw table: every on-time reading counted once, late ones (behind the
watermark when they arrived) only in the raw and late-readings tables.
"""

from __future__ import annotations

import shutil
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from spark_jobs.streaming_job import JobOptions
from spark_jobs.weather.job import WeatherJob
from tests.integration.streaming_fixtures import (
    isolated,
    kill_twice_then_finish,
    prepare,
    scalar,
    send,
    topic_messages,
)
from tributary.catalog import PLATFORM, WEATHER, Pipeline, PlatformNames
from tributary.clients import pg_connect
from tributary.producers.weather import INVALID_KINDS, ReadingMix, expected_rule, generate_readings
from tributary.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VALID_KINDS = ("valid", "late", "out_of_order")

# Stored summary rows that differ from a recomputation over the raw readings the summary counts
# (all but unfolded late ones), per station and over all stations, and recomputed rows missing
# from it. Float sums depend on the order of addition: compared with a relative tolerance.
SUMMARY_DIFFERENCES = """
WITH counted AS (
    SELECT r.* FROM weather_readings r
    WHERE NOT EXISTS (
        SELECT 1 FROM weather_late_readings l
        WHERE l.folded_at IS NULL
          AND (l.topic, l.kafka_partition, l.kafka_offset) = (r.topic, r.kafka_partition, r.kafka_offset)
    )
), recomputed AS (
    SELECT coalesce(station_id, '*') AS station_id,
           date_bin('1 hour', event_ts, '1970-01-01 00:00:00+00') AS window_start,
           count(*) AS n,
           sum(temperature) AS sum_t, min(temperature) AS min_t, max(temperature) AS max_t,
           sum(humidity) AS sum_h, min(humidity) AS min_h, max(humidity) AS max_h,
           sum(wind_speed) AS sum_w, min(wind_speed) AS min_w, max(wind_speed) AS max_w
    FROM counted
    GROUP BY GROUPING SETS ((station_id, 2), (2))
)
SELECT count(*) FROM recomputed c
FULL JOIN (SELECT * FROM weather_summary WHERE window_seconds = 3600) s
    ON s.station_id = c.station_id AND s.window_start = c.window_start
WHERE s.station_id IS NULL OR c.station_id IS NULL
   OR s.reading_count <> c.n
   OR abs(s.sum_temperature - c.sum_t) > 1e-9 * greatest(abs(c.sum_t), 1)
   OR abs(s.sum_humidity - c.sum_h) > 1e-9 * greatest(abs(c.sum_h), 1)
   OR abs(s.sum_wind_speed - c.sum_w) > 1e-9 * greatest(abs(c.sum_w), 1)
   OR s.min_temperature <> c.min_t OR s.max_temperature <> c.max_t
   OR s.min_humidity <> c.min_h OR s.max_humidity <> c.max_h
   OR s.min_wind_speed <> c.min_w OR s.max_wind_speed <> c.max_w
"""


def run_job(spark: SparkSession, settings: Settings, pipeline: Pipeline, platform: PlatformNames) -> None:
    job = WeatherJob(spark, settings, JobOptions(available_now=True, es_enabled=False), pipeline, platform)
    assert job.run() == 0, "the job failed; see its log above"


def summary_differences(settings: Settings) -> int:
    return int(scalar(settings, SUMMARY_DIFFERENCES))


def test_a_known_mix_lands_exactly_and_late_readings_are_kept_aside(spark: SparkSession, settings: Settings) -> None:
    pipeline, platform = isolated(WEATHER, uuid.uuid4().hex[:8])
    prepare(settings, pipeline, platform)

    # Phase 1, one batch: 66 minutes of on-time readings (an hour boundary inside), ending 40
    # minutes ago. The job has seen no event time before, so nothing in it is late.
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=106)
    phase1 = list(generate_readings(4_000, seed=3, start=start, readings_per_s=1, mix=ReadingMix(stations=20)))
    send(settings, pipeline.topic.name, phase1)
    run_job(spark, settings, pipeline, platform)
    watermark = max(e.event_time for e in phase1) - timedelta(seconds=pipeline.windows[0].watermark_s)

    # Phase 2: 400 s more, with late readings (30 min behind, so behind the watermark), out of
    # order ones (4 min behind, within it) and every kind of invalid reading.
    mix = ReadingMix(stations=20, invalid_share=0.15, late_share=0.1, out_of_order_share=0.1)
    phase2 = list(
        generate_readings(2_000, seed=4, start=phase1[-1].event_time + timedelta(seconds=1), readings_per_s=5, mix=mix)
    )
    send(settings, pipeline.topic.name, phase2)
    run_job(spark, settings, pipeline, platform)

    kinds = Counter(e.kind for e in phase1 + phase2)
    invalid = [e for e in phase1 + phase2 if e.kind.startswith("invalid:")]
    assert {k.removeprefix("invalid:") for k in kinds if k.startswith("invalid:")} == set(INVALID_KINDS)
    late = [e for e in phase2 if e.kind == "late"]
    assert late and all(e.event_time < watermark for e in late)
    assert kinds["out_of_order"] > 0
    valid = sum(kinds[k] for k in VALID_KINDS)

    # Raw: every valid reading once (late ones too); late ones also in the late table.
    assert scalar(settings, "SELECT count(*) FROM weather_readings") == valid
    assert (
        scalar(settings, "SELECT count(DISTINCT (topic, kafka_partition, kafka_offset)) FROM weather_readings") == valid
    )
    assert scalar(settings, "SELECT count(*) FROM weather_late_readings") == len(late)
    assert scalar(settings, "SELECT count(*) FROM weather_late_readings WHERE event_ts >= watermark") == 0
    assert scalar(settings, "SELECT sum(late_rows) FROM job_heartbeats WHERE job_name = 'weather'") == len(late)

    # Dead letters: every invalid reading with its rule, payload byte for byte, and its message.
    with pg_connect(settings.pg_url) as conn:
        dead = conn.execute("SELECT reasons, payload FROM dead_letters WHERE pipeline = 'weather'").fetchall()
    assert Counter(r[0][0] for r in dead) == Counter(expected_rule(e.kind) for e in invalid)
    assert sorted(bytes(r[1]) for r in dead) == sorted(e.value for e in invalid)
    assert scalar(settings, "SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0
    messages = topic_messages(settings, platform.dead_letter_topic.name)
    assert len({dict(m.headers())["dedup_key"] for m in messages}) == len(invalid)

    # Summaries: per station and overall, equal to a recomputation from the on-time raw rows.
    assert summary_differences(settings) == 0
    on_time = valid - len(late)
    assert scalar(settings, "SELECT sum(reading_count) FROM weather_summary WHERE station_id = '*'") == on_time
    assert scalar(settings, "SELECT count(*) FROM weather_summary WHERE station_id = '*'") >= 2
    newest = max(e.event_time for e in phase1 + phase2 if e.kind in VALID_KINDS)
    assert scalar(settings, "SELECT max_event_ts FROM stream_watermarks WHERE job_name = 'weather'") == newest

    # A replay of everything (checkpoint gone) adds nothing anywhere.
    before = scalar(settings, "SELECT sum(reading_count) FROM weather_summary")
    shutil.rmtree(pipeline.checkpoint_location(settings.checkpoint_root))
    run_job(spark, settings, pipeline, platform)
    assert scalar(settings, "SELECT sum(reading_count) FROM weather_summary") == before
    assert scalar(settings, "SELECT count(*) FROM weather_readings") == valid
    assert scalar(settings, "SELECT count(*) FROM weather_late_readings") == len(late)
    assert summary_differences(settings) == 0


@pytest.mark.timeout(900)
def test_sigkilled_weather_driver_restarts_without_loss_or_double_counting(
    private_settings: Settings,
    tmp_path: Path,
) -> None:
    settings = private_settings
    prepare(settings, WEATHER, PLATFORM)
    log = tmp_path / "weather.log"

    # 30k readings within 5 minutes of event time (inside the 10-minute watermark, so none is
    # late whatever the batch boundaries), out-of-order ones and 2% invalid.
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=15)
    mix = ReadingMix(stations=300, invalid_share=0.02, out_of_order_share=0.05, out_of_order_by_s=120)
    readings = list(generate_readings(30_000, seed=9, start=start, readings_per_s=100, mix=mix))
    send(settings, WEATHER.topic.name, readings)
    invalid = sum(1 for e in readings if e.kind.startswith("invalid:"))
    valid = len(readings) - invalid

    def raw_rows() -> int:
        return int(scalar(settings, "SELECT count(*) FROM weather_readings"))

    args = ("--max-offsets-per-trigger", "2000", "--trigger-interval", "1")
    landed_before_kill = kill_twice_then_finish(WEATHER, log, args, raw_rows, valid)

    assert raw_rows() == valid
    assert scalar(settings, "SELECT count(*) FROM weather_late_readings") == 0
    assert scalar(settings, "SELECT count(*) FROM dead_letters") == invalid
    assert scalar(settings, "SELECT sum(reading_count) FROM weather_summary WHERE station_id = '*'") == valid
    assert summary_differences(settings) == 0
    messages = topic_messages(settings, PLATFORM.dead_letter_topic.name)
    assert len({dict(m.headers())["dedup_key"] for m in messages}) == invalid
    print(f"weather kills at raw rows {landed_before_kill}")
