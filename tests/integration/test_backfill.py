"""The backfill reproduces what the streaming job wrote, a rerun changes nothing, a dry run writes nothing.

The streaming job runs first on a known mix (real broker, PostgreSQL, ES-API server, Spark in local
mode); its summaries, anomalies, alerts and documents are the reference. Then rows and documents
are removed or damaged, and the backfill of the range must bring every table and index back to
exactly that reference. The range straddles an hour, so the backfill runs as two chunks and the
windows across the cut must come out whole.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pyspark.sql import SparkSession

from spark_jobs.batch.backfill import TARGETS, BackfillReport, BackfillRequest, run_backfill
from tests.integration.streaming_fixtures import scalar, send, topic_messages
from tests.integration.test_user_events_job import isolated, prepare, run_job
from tributary.catalog import Pipeline, PlatformNames
from tributary.clients import es_client, pg_connect
from tributary.producers.user_events import EventMix, generate_events
from tributary.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BURST_USERS = (3, 9)
SUMMARY = (
    "SELECT user_id, window_start, window_seconds, event_count, distinct_products, action_counts::text, "
    "first_event_ts, last_event_ts FROM user_activity_summary"
)
ANOMALIES = (
    "SELECT user_id, window_start, window_seconds, event_count, zscore, rule, severity, user_name, region "
    "FROM anomalous_events"
)
ALERTS = "SELECT dedup_key, topic, message_key, payload::text FROM outbox WHERE topic = %s"
# Set when a document is written; everything else must be identical.
WRITE_TIMES = ("ingested_at", "detected_at")


def documents(settings: Settings, pattern: str) -> dict[tuple[str, str], dict[str, Any]]:
    es = es_client(settings)
    es.indices.refresh(index=pattern)
    hits = es.search(index=pattern, size=10_000, query={"match_all": {}})["hits"]["hits"]
    return {
        (hit["_index"], hit["_id"]): {k: v for k, v in hit["_source"].items() if k not in WRITE_TIMES} for hit in hits
    }


def snapshot(settings: Settings, pipeline: Pipeline, platform: PlatformNames) -> dict[str, Any]:
    """Everything the streaming job derives from raw events, without write timestamps and ids."""
    with pg_connect(settings.pg_url) as conn:
        tables = {
            "summary": set(conn.execute(SUMMARY).fetchall()),
            "anomalies": set(conn.execute(ANOMALIES).fetchall()),
            "alerts": set(conn.execute(ALERTS, (platform.alerts_topic.name,)).fetchall()),
        }
    return {
        **tables,
        "events": documents(settings, pipeline.indices["events"].pattern),
        "anomaly_documents": documents(settings, pipeline.indices["anomalies"].pattern),
    }


def execute(settings: Settings, statement: str, *params: Any) -> int:
    with pg_connect(settings.pg_url) as conn:
        return conn.execute(statement, params).rowcount


def delete_documents(settings: Settings, keys: list[tuple[str, str]]) -> None:
    es = es_client(settings)
    for index, doc_id in keys:
        es.delete(index=index, id=doc_id)


def counts(report: BackfillReport) -> dict[str, tuple[int, int, int]]:
    return {name: (c.new, c.changed, c.unchanged) for name, c in report.targets.items()}


@pytest.mark.timeout(1200)
def test_backfill_reproduces_streaming_exactly_reruns_as_a_no_op_and_dry_runs_write_nothing(
    spark: SparkSession, settings: Settings
) -> None:
    tag = uuid.uuid4().hex[:8]
    pipeline, platform = isolated(tag)
    prepare(settings, pipeline, platform, users=40)

    # Four minutes of traffic across a whole hour, three hours ago (closed for the backfill), with
    # bursts (anomalies) and invalid records (dead letters, not in the raw table).
    hour = (datetime.now(UTC) - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
    start = hour - timedelta(minutes=2)
    mix = EventMix(users=40, invalid_share=0.05, burst_users=BURST_USERS, burst_share=0.25)
    events = list(generate_events(2_400, seed=21, start=start, events_per_s=10, mix=mix))
    send(settings, pipeline.topic.name, events)
    run_job(spark, settings, pipeline, platform, max_offsets_per_trigger=10_000)
    # One event four minutes later moves the watermark past every window of the traffic.
    last = events[-1].event_time
    clock = list(generate_events(1, seed=22, start=last + timedelta(minutes=4), events_per_s=1, mix=EventMix(users=40)))
    send(settings, pipeline.topic.name, clock)
    run_job(spark, settings, pipeline, platform)

    reference = snapshot(settings, pipeline, platform)
    anomalies = len(reference["anomalies"])
    assert anomalies > 0 and len(reference["summary"]) > 1_000
    assert len(reference["alerts"]) == anomalies == len(reference["anomaly_documents"])
    alerts_sent = len(topic_messages(settings, platform.alerts_topic.name))
    assert alerts_sent == anomalies

    def backfill(targets: tuple[str, ...] = TARGETS, dry_run: bool = False) -> BackfillReport:
        # The range of the traffic; the windows it overlaps reach up to a minute beyond it.
        begin, end = start - timedelta(minutes=1), last + timedelta(seconds=1)
        request = BackfillRequest(pipeline.name, begin, end, targets, dry_run=dry_run, requested_by="test")
        return run_backfill(spark, settings, request, pipeline=pipeline, platform=platform, rows_per_chunk=500)

    # Damage: summary rows and an anomaly gone, a summary row wrong, documents missing.
    deleted_summaries = execute(
        settings,
        "DELETE FROM user_activity_summary WHERE (user_id, window_start, window_seconds) IN "
        "(SELECT user_id, window_start, window_seconds FROM user_activity_summary "
        " WHERE window_start < %s ORDER BY window_start DESC, user_id LIMIT 15)",
        # The last windows before the hour: the first chunk's, but their events reach into the second's.
        hour,
    )
    assert deleted_summaries == 15
    assert execute(
        settings,
        "UPDATE user_activity_summary SET event_count = 999 WHERE (user_id, window_start, window_seconds) = "
        "(SELECT user_id, window_start, window_seconds FROM user_activity_summary "
        " WHERE window_seconds = 60 ORDER BY window_start, user_id LIMIT 1)",
    )
    gone_anomaly = execute(
        settings,
        "DELETE FROM anomalous_events WHERE (user_id, window_start) = "
        "(SELECT user_id, window_start FROM anomalous_events ORDER BY window_start, user_id LIMIT 1)",
    )
    assert gone_anomaly == 1
    missing_documents = sorted(reference["events"])[:4] + sorted(reference["anomaly_documents"])[:1]
    delete_documents(settings, missing_documents)

    report = backfill()
    assert report.state == "succeeded" and report.chunks == 2
    assert report.rows_read == report.rows_planned == len(events) - sum(e.kind.startswith("invalid:") for e in events)
    assert counts(report)["summaries"][:2] == (15, 1)
    assert counts(report)["anomalies"][:2] == (1, 0)
    assert counts(report)["alerts"] == (0, 0, anomalies), "the deleted anomaly had been alerted: no second alert"
    assert counts(report)["es"][:2] == (5, 0)
    assert snapshot(settings, pipeline, platform) == reference
    assert len(topic_messages(settings, platform.alerts_topic.name)) == alerts_sent

    # A rerun finds everything in place and writes nothing.
    again = backfill()
    assert again.written == 0, counts(again)
    assert all(c.unchanged > 0 for c in again.targets.values())
    assert snapshot(settings, pipeline, platform) == reference

    # A dry run reports what is missing and leaves it missing; this time the anomaly's alert is
    # gone too (as after compaction of the outbox), so it would be alerted again.
    assert execute(settings, "DELETE FROM user_activity_summary WHERE window_seconds = 5 AND user_id = 1") > 0
    removed = reference["summary"] - set(_rows(settings, SUMMARY))
    first_anomaly = sorted(reference["anomalies"])[0]
    assert execute(
        settings, "DELETE FROM anomalous_events WHERE user_id = %s AND window_start = %s", *first_anomaly[:2]
    )
    alert_key = f"alert:{first_anomaly[0]}:{int(first_anomaly[1].timestamp())}:{first_anomaly[2]}"
    assert execute(settings, "DELETE FROM outbox WHERE dedup_key = %s", alert_key) == 1
    delete_documents(settings, sorted(reference["events"])[-2:])
    damaged = snapshot(settings, pipeline, platform)

    dry = backfill(dry_run=True)
    assert counts(dry)["summaries"][:2] == (len(removed), 0)
    assert counts(dry)["anomalies"][:2] == (1, 0)
    assert counts(dry)["alerts"][0] == 1
    assert counts(dry)["es"][0] == 2
    assert snapshot(settings, pipeline, platform) == damaged, "a dry run writes nothing"

    # The real run restores it all and publishes the one new alert.
    fixed = backfill()
    assert counts(fixed)["alerts"][0] == 1 and fixed.published >= 1
    assert snapshot(settings, pipeline, platform) == reference
    assert len(topic_messages(settings, platform.alerts_topic.name)) == alerts_sent + 1

    # Every run is on record.
    with pg_connect(settings.pg_url) as conn:
        runs = conn.execute(
            "SELECT state, dry_run, rows_read, requested_by, finished_at IS NOT NULL FROM backfill_runs ORDER BY id"
        ).fetchall()
    assert runs == [("succeeded", dry, report.rows_read, "test", True) for dry in (False, False, True, False)]
    assert scalar(settings, "SELECT (written->'summaries'->>'new')::int FROM backfill_runs ORDER BY id LIMIT 1") == 15


def _rows(settings: Settings, query: str) -> list[Any]:
    with pg_connect(settings.pg_url) as conn:
        return conn.execute(query).fetchall()
