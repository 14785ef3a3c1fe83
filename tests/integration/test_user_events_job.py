"""End to end: produce a known mix, run the user_events job, assert exact counts in every sink.

Real broker (Tansu), real PostgreSQL, real ES-API server (osmem), real Spark in local mode. Each
test gets its own topics and index names (the catalog entry with a unique suffix), its own
database and checkpoint directory.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pyspark.sql import SparkSession

from spark_jobs.user_events.job import JobOptions, UserEventsJob
from tests.integration import streaming_fixtures
from tests.integration.streaming_fixtures import scalar, send, topic_messages
from tributary.catalog import USER_EVENTS, AnomalyRules, Pipeline, PlatformNames
from tributary.clients import es_client, pg_connect
from tributary.producers.user_events import (
    INVALID_KINDS,
    EventMix,
    expected_rule,
    generate_events,
    user_rows,
)
from tributary.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BURST_USERS = (5, 6)


def isolated(tag: str) -> tuple[Pipeline, PlatformNames]:
    """The catalog's user_events entry and platform topics with names of this test's own."""
    return streaming_fixtures.isolated(USER_EVENTS, tag)


def prepare(settings: Settings, pipeline: Pipeline, platform: PlatformNames, users: int) -> None:
    """The pipeline's topics, templates and tables, and `users` users for the enrichment."""
    streaming_fixtures.prepare(settings, pipeline, platform)
    with pg_connect(settings.pg_url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO users (user_id, name, email, region, segment) VALUES (%s, %s, %s, %s, %s)", user_rows(users)
        )


def fresh_pipeline(settings: Settings, users: int) -> tuple[Pipeline, PlatformNames, AnomalyRules]:
    """A prepared pipeline of this test's own (`isolated` + `prepare`) and its anomaly rules."""
    pipeline, platform = isolated(uuid.uuid4().hex[:8])
    prepare(settings, pipeline, platform, users=users)
    assert pipeline.anomaly is not None
    return pipeline, platform, pipeline.anomaly


def run_job(
    spark: SparkSession, settings: Settings, pipeline: Pipeline, platform: PlatformNames, **options: Any
) -> None:
    job = UserEventsJob(spark, settings, JobOptions(available_now=True, **options), pipeline, platform)
    assert job.run() == 0, "the job failed; see its log above"


RECOMPUTED_DIFF = """
WITH expanded AS (
    SELECT e.user_id, e.product_id, e.action, e.event_ts, window_start
    FROM user_events e
    CROSS JOIN LATERAL generate_series(
        to_timestamp(floor(extract(epoch FROM e.event_ts) / %(slide)s) * %(slide)s) - make_interval(secs => %(seconds)s - %(slide)s),
        to_timestamp(floor(extract(epoch FROM e.event_ts) / %(slide)s) * %(slide)s),
        make_interval(secs => %(slide)s)) AS window_start
    WHERE e.event_ts >= %(on_time_from)s
), actions AS (
    SELECT user_id, window_start, jsonb_object_agg(action, n) AS action_counts
    FROM (SELECT user_id, window_start, action, count(*) AS n FROM expanded GROUP BY 1, 2, 3) AS per_action
    GROUP BY 1, 2
), recomputed AS (
    SELECT user_id, window_start, %(seconds)s AS window_seconds, count(*) AS event_count,
           count(DISTINCT product_id)::int AS distinct_products, a.action_counts,
           min(event_ts) AS first_event_ts, max(event_ts) AS last_event_ts
    FROM expanded JOIN actions a USING (user_id, window_start)
    GROUP BY user_id, window_start, a.action_counts
), stored AS (
    SELECT user_id, window_start, window_seconds, event_count, distinct_products, action_counts,
           first_event_ts, last_event_ts
    FROM user_activity_summary
    WHERE window_seconds = %(seconds)s AND window_start + make_interval(secs => %(seconds)s) <= %(closed_before)s
)
SELECT count(*) FROM (
    (SELECT * FROM recomputed WHERE window_start + make_interval(secs => %(seconds)s) <= %(closed_before)s EXCEPT SELECT * FROM stored)
    UNION ALL
    (SELECT * FROM stored EXCEPT SELECT * FROM recomputed)
) AS differences
"""


def summary_differences(
    settings: Settings, seconds: int, slide: int, on_time_from: datetime, closed_before: datetime
) -> int:
    """Windows of closed periods where the stored summary differs from a recomputation from raw."""
    with pg_connect(settings.pg_url) as conn:
        row = conn.execute(
            RECOMPUTED_DIFF,
            {"seconds": seconds, "slide": slide, "on_time_from": on_time_from, "closed_before": closed_before},
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_known_mix_lands_exactly_in_every_sink(spark: SparkSession, settings: Settings) -> None:
    pipeline, platform, rules = fresh_pipeline(settings, users=40)

    # Phase 1: on-time traffic over ~4 minutes, ending 5 minutes ago: valid events, every kind of
    # invalid record, and bursts from two users (far above the threshold in a 1-minute window).
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=9)
    mix = EventMix(users=40, invalid_share=0.15, burst_users=BURST_USERS, burst_share=0.3)
    phase1 = list(generate_events(2_400, seed=11, start=start, events_per_s=10, mix=mix))
    send(settings, pipeline.topic.name, phase1)
    # One batch: with several, skewed partitions (the burst users') let the watermark overtake
    # a slower partition, which is correct streaming behaviour but not what this test checks.
    run_job(spark, settings, pipeline, platform, max_offsets_per_trigger=10_000)

    # Phase 2 (restarted from the checkpoints): late events far behind the watermark, and one
    # event 3 minutes after phase 1 that moves the watermark past every phase-1 window.
    phase1_end = phase1[-1].event_time
    late = list(
        generate_events(30, seed=12, start=start - timedelta(minutes=30), events_per_s=1, mix=EventMix(users=40))
    )
    clock = list(
        generate_events(1, seed=13, start=phase1_end + timedelta(minutes=3), events_per_s=1, mix=EventMix(users=40))
    )
    send(settings, pipeline.topic.name, late + clock)
    run_job(spark, settings, pipeline, platform)

    kinds = Counter(e.kind for e in phase1)
    invalid = [e for e in phase1 if e.kind.startswith("invalid:")]
    valid_count = len(phase1) - len(invalid) + len(late) + len(clock)
    assert {k.removeprefix("invalid:") for k in kinds if k.startswith("invalid:")} == set(INVALID_KINDS), (
        "the mix covers every kind of invalid record"
    )

    # Raw: every valid event exactly once; dead letters: every invalid one, with its rule.
    assert scalar(settings, "SELECT count(*) FROM user_events") == valid_count
    assert (
        scalar(settings, "SELECT count(DISTINCT (topic, kafka_partition, kafka_offset)) FROM user_events")
        == valid_count
    )
    assert scalar(settings, "SELECT count(*) FROM dead_letters") == len(invalid)
    with pg_connect(settings.pg_url) as conn:
        reasons = conn.execute("SELECT reasons FROM dead_letters").fetchall()
    expected_reasons = Counter(expected_rule(e.kind) for e in invalid)
    assert Counter(r[0][0] for r in reasons) == expected_reasons

    # Elasticsearch: one document per raw row.
    es = es_client(settings)
    es.indices.refresh(index=pipeline.indices["events"].pattern)
    assert es.count(index=pipeline.indices["events"].pattern)["count"] == valid_count

    # Summaries equal a recomputation from raw for every closed window (late events excluded:
    # they arrived behind the watermark and are, by design, only in the raw table).
    watermark = clock[0].event_time - timedelta(seconds=rules.window.watermark_s)
    for window in pipeline.windows:
        assert (
            summary_differences(settings, window.duration_s, window.slide_s or window.duration_s, start, watermark) == 0
        )
    assert scalar(settings, "SELECT count(*) FROM user_activity_summary WHERE window_seconds = 60") > 0

    # Anomalies: the burst users, exactly once per (user, window), alerted once each.
    anomalies = scalar(settings, "SELECT count(*) FROM anomalous_events")
    assert anomalies > 0
    assert scalar(settings, "SELECT array_agg(DISTINCT user_id ORDER BY user_id) FROM anomalous_events") == list(
        BURST_USERS
    )
    assert scalar(settings, "SELECT count(*) FROM anomalous_events WHERE user_name IS NULL") == 0, "enriched"
    alerts = topic_messages(settings, platform.alerts_topic.name)
    assert len(alerts) == anomalies
    assert len({dict(m.headers())["dedup_key"] for m in alerts}) == anomalies
    es.indices.refresh(index=pipeline.indices["anomalies"].pattern)
    assert es.count(index=pipeline.indices["anomalies"].pattern)["count"] == anomalies

    # Outbox: everything published; the dead-letter topic has one message per dead letter.
    assert scalar(settings, "SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0
    assert len(topic_messages(settings, platform.dead_letter_topic.name)) == len(invalid)

    # Heartbeats: the job's one query reported its batches with their violation counts.
    assert scalar(settings, "SELECT array_agg(DISTINCT query_name) FROM job_heartbeats") == [f"{pipeline.name}.events"]
    violations = scalar(settings, "SELECT sum((v).value::int) FROM job_heartbeats, jsonb_each(violations) AS v")
    assert violations == sum(len(r[0]) for r in reasons)

    # Replaying the whole topic from scratch (new checkpoints) lands nothing twice.
    replay = replace(settings, checkpoint_root=settings.checkpoint_root + "-replay")
    run_job(spark, replay, pipeline, platform, starting_offsets="earliest")
    assert scalar(settings, "SELECT count(*) FROM user_events") == valid_count
    assert scalar(settings, "SELECT count(*) FROM dead_letters") == len(invalid)
    assert len(topic_messages(settings, platform.dead_letter_topic.name)) == len(invalid)
    assert scalar(settings, "SELECT count(*) FROM anomalous_events") >= anomalies
    assert len(topic_messages(settings, platform.alerts_topic.name)) == scalar(
        settings, "SELECT count(*) FROM anomalous_events"
    )
    es.indices.refresh(index=pipeline.indices["events"].pattern)
    assert es.count(index=pipeline.indices["events"].pattern)["count"] == valid_count


def test_windows_a_lost_close_left_open_are_closed_at_the_next_start(spark: SparkSession, settings: Settings) -> None:
    """Windows close in the background; a driver killed before its last close left windows open.

    Here the close is undone by hand (closed-through mark moved back, its 1-minute windows,
    anomalies and alert rows removed). The next start closes them again from the buckets, with
    nothing new in the topic: the same summary rows and the same anomalies, each alerted once.
    """
    pipeline, platform, rules = fresh_pipeline(settings, users=20)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=9)
    mix = EventMix(users=20, burst_users=BURST_USERS, burst_share=0.3)
    events = list(generate_events(1_200, seed=21, start=start, events_per_s=10, mix=mix))
    clock = list(
        generate_events(1, seed=22, start=events[-1].event_time + timedelta(minutes=3), events_per_s=1, mix=mix)
    )
    send(settings, pipeline.topic.name, events + clock)
    run_job(spark, settings, pipeline, platform)

    def closed_state() -> tuple[int, int, int, int]:
        return (
            scalar(settings, "SELECT count(*) FROM user_activity_summary WHERE window_seconds = 60"),
            scalar(settings, "SELECT count(*) FROM anomalous_events"),
            scalar(settings, "SELECT count(*) FROM outbox WHERE dedup_key LIKE 'alert:%%'"),
            scalar(settings, "SELECT count(*) FROM outbox WHERE published_at IS NULL"),
        )

    before = closed_state()
    assert before[1] > 0 and before[1] == before[2] and before[3] == 0
    lost_from = start + timedelta(minutes=1)
    with pg_connect(settings.pg_url) as conn:
        conn.execute(
            "UPDATE stream_watermarks SET max_event_ts = %s WHERE job_name = %s AND query_name = 'events.windows'",
            (lost_from, pipeline.name),
        )
        lost = "window_seconds = 60 AND window_start + interval '60 seconds' > %s"
        keys = conn.execute(
            f"SELECT 'alert:' || user_id || ':' || extract(epoch FROM window_start)::bigint || ':60' "
            f"FROM anomalous_events WHERE {lost}",
            (lost_from,),
        ).fetchall()
        assert keys, "the undone close had anomalies"
        conn.execute("DELETE FROM outbox WHERE dedup_key = ANY(%s)", ([k[0] for k in keys],))
        conn.execute(f"DELETE FROM anomalous_events WHERE {lost}", (lost_from,))
        conn.execute(f"DELETE FROM user_activity_summary WHERE {lost}", (lost_from,))

    run_job(spark, settings, pipeline, platform)
    assert closed_state() == before
    watermark = clock[0].event_time - timedelta(seconds=rules.window.watermark_s)
    assert summary_differences(settings, 60, 5, start, watermark) == 0
    # The alerts of the windows closed again were published again (consumers drop repeats by key).
    alerts = topic_messages(settings, platform.alerts_topic.name)
    assert len({dict(m.headers())["dedup_key"] for m in alerts}) == before[1]
