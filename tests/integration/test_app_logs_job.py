"""The app_logs job end to end: exact counts in every sink, minute statistics, replays and kills.

Real broker (Tansu), real PostgreSQL, real ES-API server (osmem), real Spark in local mode. The
per-minute statistics are checked against a recomputation in Python from the raw rows.
"""

from __future__ import annotations

import math
import shutil
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from spark_jobs.app_logs.job import AppLogsJob
from spark_jobs.streaming_job import JobOptions
from tests.integration.streaming_fixtures import (
    isolated,
    kill_twice_then_finish,
    prepare,
    scalar,
    send,
    topic_messages,
)
from tributary.catalog import APP_LOGS, PLATFORM, Pipeline, PlatformNames
from tributary.clients import es_client, pg_connect
from tributary.producers.app_logs import INVALID_KINDS, LogMix, expected_rule, generate_log_lines
from tributary.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def run_job(spark: SparkSession, settings: Settings, pipeline: Pipeline, platform: PlatformNames) -> None:
    job = AppLogsJob(spark, settings, JobOptions(available_now=True), pipeline, platform)
    assert job.run() == 0, "the job failed; see its log above"


def percentile_cont(values: list[float], share: float) -> float:
    """PostgreSQL's percentile_cont: linear interpolation between the closest ranks."""
    ordered = sorted(values)
    position = share * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def minute_stats_differences(settings: Settings) -> list[Any]:
    """Stored minute statistics that differ from a recomputation in Python from the raw rows."""
    with pg_connect(settings.pg_url) as conn:
        rows = conn.execute(
            "SELECT to_timestamp(floor(extract(epoch FROM event_ts) / 60) * 60), method, path_template, status, "
            "latency_ms, bytes FROM app_log_events"
        ).fetchall()
        stored = {
            (r[0], r[1], r[2]): r[3:]
            for r in conn.execute(
                "SELECT minute_start, method, path_template, requests, errors_4xx, errors_5xx, p95_latency_ms, bytes "
                "FROM app_log_minute_stats"
            ).fetchall()
        }
    groups: dict[tuple[Any, str, str], list[Any]] = defaultdict(list)
    for minute, method, template, status, latency, size in rows:
        groups[(minute, method, template)].append((status, latency, size))
        groups[(minute, "*", "*")].append((status, latency, size))
    differences = []
    for key, members in groups.items():
        latencies = [m[1] for m in members if m[1] is not None]
        expected = (
            len(members),
            sum(1 for m in members if 400 <= m[0] < 500),
            sum(1 for m in members if m[0] >= 500),
            percentile_cont(latencies, 0.95) if latencies else None,
            sum(m[2] or 0 for m in members),
        )
        got = stored.get(key)
        if (
            got is None
            or got[:3] != expected[:3]
            or got[4] != expected[4]
            or (got[3] is None) != (expected[3] is None)
            or (
                got[3] is not None and abs(got[3] - expected[3]) > 1e-6  # type: ignore[operator]
            )
        ):
            differences.append((key, got, expected))
    differences += [(key, stored[key], None) for key in stored.keys() - groups.keys()]
    return differences


def test_a_known_mix_lands_exactly_in_every_sink(spark: SparkSession, settings: Settings) -> None:
    pipeline, platform = isolated(APP_LOGS, uuid.uuid4().hex[:8])
    prepare(settings, pipeline, platform)

    # Five minutes of traffic ending 10 minutes ago: both formats, error bursts, every kind of
    # malformed line.
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=15)
    mix = LogMix(invalid_share=0.12, error_burst_share=0.05, json_share=0.4)
    lines = list(generate_log_lines(3_000, seed=5, start=start, lines_per_s=10, mix=mix))
    send(settings, pipeline.topic.name, lines)
    run_job(spark, settings, pipeline, platform)

    kinds = Counter(e.kind for e in lines)
    invalid = [e for e in lines if e.kind.startswith("invalid:")]
    assert {k.removeprefix("invalid:") for k in kinds if k.startswith("invalid:")} == set(INVALID_KINDS)
    valid = len(lines) - len(invalid)

    # Raw: every parsed line once; both formats; user agents resolved.
    assert scalar(settings, "SELECT count(*) FROM app_log_events") == valid
    assert (
        scalar(settings, "SELECT count(DISTINCT (topic, kafka_partition, kafka_offset)) FROM app_log_events") == valid
    )
    formats = {r[0] for r in pg_rows(settings, "SELECT DISTINCT source_format FROM app_log_events")}
    assert formats == {"combined", "json"}
    assert scalar(settings, "SELECT count(*) FROM app_log_events WHERE browser IS NULL AND user_agent IS NOT NULL") == 0
    assert scalar(settings, "SELECT count(*) FROM app_log_events WHERE path_template LIKE '%{id}%'") > 0

    # Dead letters: every malformed line with its rule, the line byte for byte, and its message.
    dead = pg_rows(settings, "SELECT reasons, payload FROM dead_letters WHERE pipeline = 'app_logs'")
    assert Counter(tuple(r[0]) for r in dead) == Counter((expected_rule(e.kind),) for e in invalid)
    assert sorted(bytes(r[1]) for r in dead) == sorted(e.value for e in invalid)
    messages = topic_messages(settings, platform.dead_letter_topic.name)
    assert len({dict(m.headers())["dedup_key"] for m in messages}) == len(invalid)

    # Elasticsearch: one document per raw row, in the daily index of its time.
    es = es_client(settings)
    index = pipeline.indices["logs"]
    es.indices.refresh(index=index.pattern)
    assert es.count(index=index.pattern)["count"] == valid
    assert es.indices.exists(index=index.index_for(start.date()))

    # Minute statistics equal a recomputation from raw; error bursts show as 5xx.
    assert minute_stats_differences(settings) == []
    assert scalar(settings, "SELECT sum(requests) FROM app_log_minute_stats WHERE method = '*'") == valid
    assert (
        scalar(settings, "SELECT sum(errors_5xx) FROM app_log_minute_stats WHERE method = '*'") >= kinds["error_burst"]
    )

    # A replay of everything (checkpoint gone) adds nothing anywhere.
    shutil.rmtree(pipeline.checkpoint_location(settings.checkpoint_root))
    run_job(spark, settings, pipeline, platform)
    assert scalar(settings, "SELECT count(*) FROM app_log_events") == valid
    es.indices.refresh(index=index.pattern)
    assert es.count(index=index.pattern)["count"] == valid
    assert minute_stats_differences(settings) == []


def pg_rows(settings: Settings, query: str) -> list[tuple[Any, ...]]:
    with pg_connect(settings.pg_url) as conn:
        return [tuple(r) for r in conn.execute(query).fetchall()]


@pytest.mark.timeout(900)
def test_sigkilled_app_logs_driver_restarts_without_loss_or_duplicates(
    private_settings: Settings,
    tmp_path: Path,
) -> None:
    settings = private_settings
    prepare(settings, APP_LOGS, PLATFORM)
    log = tmp_path / "app_logs.log"

    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)
    mix = LogMix(invalid_share=0.02, error_burst_share=0.02)
    lines = list(generate_log_lines(30_000, seed=8, start=start, lines_per_s=50, mix=mix))
    send(settings, APP_LOGS.topic.name, lines)
    invalid = sum(1 for e in lines if e.kind.startswith("invalid:"))
    valid = len(lines) - invalid

    def raw_rows() -> int:
        return int(scalar(settings, "SELECT count(*) FROM app_log_events"))

    args = ("--max-offsets-per-trigger", "2000", "--trigger-interval", "1")
    landed_before_kill = kill_twice_then_finish(APP_LOGS, log, args, raw_rows, valid)

    assert raw_rows() == valid
    assert scalar(settings, "SELECT count(*) FROM dead_letters") == invalid
    es = es_client(settings)
    pattern = APP_LOGS.indices["logs"].pattern
    es.indices.refresh(index=pattern)
    assert es.count(index=pattern)["count"] == valid
    assert minute_stats_differences(settings) == []
    messages = topic_messages(settings, PLATFORM.dead_letter_topic.name)
    assert len({dict(m.headers())["dedup_key"] for m in messages}) == invalid
    print(f"app_logs kills at raw rows {landed_before_kill}")
