"""The user_events job under failure: SIGKILLed drivers and malformed input.

The kill test runs the job the way production does (spark-submit, its own process group) against
a broker and an ES-API server of its own, kills the driver twice mid-run, restarts it from its
checkpoints, and checks that every sink holds each event exactly once.
"""

from __future__ import annotations

import json
import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from spark_jobs.user_events.job import JobOptions, UserEventsJob
from tests.integration.streaming_fixtures import (
    kill_twice_then_finish,
    scalar,
    send,
    start_driver,
    topic_messages,
)
from tests.integration.test_user_events_job import isolated, prepare, summary_differences
from tributary.catalog import PLATFORM, USER_EVENTS
from tributary.clients import es_client
from tributary.producers.user_events import EventMix, GeneratedEvent, generate_events
from tributary.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(900)
def test_sigkilled_driver_restarts_from_its_checkpoint_without_loss_or_duplicates(
    private_settings: Settings,
    tmp_path: Path,
) -> None:
    settings = private_settings
    prepare(settings, USER_EVENTS, PLATFORM, users=2_000)
    log = tmp_path / "job.log"

    # 40k events within 20 s of event time (inside every watermark, so nothing is late whatever
    # the batch boundaries), 2% invalid, two bursting users for anomalies and alerts.
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    mix = EventMix(users=2_000, invalid_share=0.02, burst_users=(7, 8), burst_share=0.1)
    events = list(generate_events(40_000, seed=21, start=start, events_per_s=2_000, mix=mix))
    send(settings, USER_EVENTS.topic.name, events)
    invalid = sum(1 for e in events if e.kind.startswith("invalid:"))
    valid = len(events) - invalid

    def raw_rows() -> int:
        return int(scalar(settings, "SELECT count(*) FROM user_events"))

    args = ("--max-offsets-per-trigger", "3000", "--trigger-interval", "1")
    landed_before_kill = kill_twice_then_finish(USER_EVENTS, log, args, raw_rows, valid)
    # One event 3 minutes later moves the watermark past every window, so all of them close.
    clock = list(
        generate_events(1, seed=22, start=events[-1].event_time + timedelta(minutes=3), events_per_s=1, mix=EventMix())
    )
    send(settings, USER_EVENTS.topic.name, clock)
    closer = start_driver(USER_EVENTS, log, "--available-now")
    assert closer.wait(600) == 0, log.read_text(errors="replace")[-3000:]

    # 0 lost, 0 duplicated: raw rows, dead letters, ES documents.
    total_valid = valid + len(clock)
    assert raw_rows() == total_valid
    assert scalar(settings, "SELECT count(*) FROM dead_letters") == invalid
    es = es_client(settings)
    es.indices.refresh(index=USER_EVENTS.indices["events"].pattern)
    assert es.count(index=USER_EVENTS.indices["events"].pattern)["count"] == total_valid

    # Summaries equal a recomputation from the raw table.
    closed_before = clock[0].event_time - timedelta(seconds=120)
    for window in USER_EVENTS.windows:
        assert (
            summary_differences(settings, window.duration_s, window.slide_s or window.duration_s, start, closed_before)
            == 0
        )

    # Alerts: one outbox row per anomaly, every one published; on the topic every anomaly is
    # present. A kill between "sent" and "marked published" may re-send a message (at most one
    # round per kill); consumers drop it by its dedup_key header, so only repeats may differ.
    anomalies = int(scalar(settings, "SELECT count(*) FROM anomalous_events"))
    assert anomalies > 0
    assert scalar(settings, "SELECT count(*) FROM outbox WHERE topic = %s", PLATFORM.alerts_topic.name) == anomalies
    assert scalar(settings, "SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0
    alerts = topic_messages(settings, PLATFORM.alerts_topic.name)
    assert len({dict(m.headers())["dedup_key"] for m in alerts}) == anomalies
    dead_letter_messages = topic_messages(settings, PLATFORM.dead_letter_topic.name)
    assert len({dict(m.headers())["dedup_key"] for m in dead_letter_messages}) == invalid
    resent = (len(alerts) - anomalies) + (len(dead_letter_messages) - invalid)
    print(f"kills at raw rows {landed_before_kill}; messages re-sent after a kill: {resent}")


def malformed_payloads(count: int, seed: int) -> list[bytes]:
    """Random malformed input: truncated JSON, wrong types, huge strings, binary, empty."""
    rng = random.Random(seed)
    template = json.loads(
        next(generate_events(1, seed=seed, start=datetime.now(UTC), events_per_s=1, mix=EventMix())).value
    )
    wrong_values: list[Any] = [None, True, [], {}, "", "x" * 50, -1, 0, 1.5, 10**30, ["nested", {"a": 1}]]
    payloads: list[bytes] = []
    for _ in range(count):
        shape = rng.randrange(6)
        if shape == 0:
            text = json.dumps({**template, "location": "ü" * rng.randint(0, 300)})
            payloads.append(text.encode()[: rng.randint(0, len(text.encode()) - 1)])
        elif shape == 1:
            field = rng.choice(["user_id", "product_id", "timestamp", "action", "ip_address"])
            value = rng.choice([v for v in wrong_values if v not in (-1, 0) or field in ("user_id", "product_id")])
            payloads.append(json.dumps({**template, field: value}).encode())
        elif shape == 2:
            field = rng.choice(["location", "device_id", "user_segment", "device_type"])
            payloads.append(json.dumps({**template, field: "y" * rng.randint(300, 200_000)}).encode())
        elif shape == 3:
            payloads.append(b"\xff" + rng.randbytes(rng.randint(0, 2_000)))
        elif shape == 4:
            payloads.append(rng.choice([b"", b" ", b"null", b"[]", b"42", b'"text"', b"{}"]))
        else:
            payloads.append(json.dumps({k: v for k, v in template.items() if rng.random() < 0.5}).encode()[:-1] + b",}")
    return payloads


def test_ten_thousand_malformed_payloads_all_become_dead_letters(spark: SparkSession, settings: Settings) -> None:
    pipeline, platform = isolated(f"fuzz{os.getpid()}")
    prepare(settings, pipeline, platform, users=10)
    payloads = malformed_payloads(10_000, seed=5)
    events = [GeneratedEvent("malformed", None, p, datetime.now(UTC)) for p in payloads]
    send(settings, pipeline.topic.name, events)

    job = UserEventsJob(spark, settings, JobOptions(available_now=True, es_enabled=False), pipeline, platform)
    assert job.run() == 0, "malformed input must never fail the job"

    assert scalar(settings, "SELECT count(*) FROM user_events") == 0
    assert scalar(settings, "SELECT count(*) FROM dead_letters") == len(payloads)
    assert scalar(settings, "SELECT count(*) FROM dead_letters WHERE cardinality(reasons) = 0") == 0
    stored = scalar(settings, "SELECT array_agg(payload ORDER BY kafka_partition, kafka_offset) FROM dead_letters")
    assert sorted(bytes(p) for p in stored) == sorted(payloads), "every payload is kept byte for byte"
