"""user_events transformations on small in-memory DataFrames (real local Spark)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession

from spark_jobs.user_events import transforms as T
from tributary.catalog import USER_EVENTS, Window

KAFKA_SCHEMA = (
    "key binary, value binary, topic string, partition int, offset long, timestamp timestamp, timestampType int"
)
NOW = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)

GOOD = {
    "user_id": 7,
    "product_id": 42,
    "action": "purchase",
    "timestamp": "2026-11-23T09:59:58Z",
    "device_id": "dev-1",
    "device_type": "mobile",
    "location": "Berlin, DE",
    "user_segment": "premium",
    "ip_address": "10.0.0.7",
}


def kafka_rows(spark: SparkSession, payloads: list[bytes | None], ts: datetime = NOW) -> DataFrame:
    rows = [(None, p, "user_events", 0, i, ts, 0) for i, p in enumerate(payloads)]
    return spark.createDataFrame(rows, KAFKA_SCHEMA)


def event(**changes: Any) -> bytes:
    doc = {**GOOD, **changes}
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def violations_of(spark: SparkSession, payload: bytes | None) -> list[str]:
    (row,) = T.parse_user_events(kafka_rows(spark, [payload]), USER_EVENTS).collect()
    return list(row["violations"])


def test_a_good_event_is_valid_and_typed(spark: SparkSession) -> None:
    parsed = T.parse_user_events(kafka_rows(spark, [event()]), USER_EVENTS)
    (row,) = T.valid_events(parsed).collect()
    assert row["user_id"] == 7 and row["product_id"] == 42 and row["action"] == "purchase"
    assert row["event_ts"] == datetime(2026, 11, 23, 9, 59, 58)
    assert (row["topic"], row["kafka_partition"], row["kafka_offset"]) == ("user_events", 0, 0)
    assert T.dead_letters(parsed, "user_events").count() == 0


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (None, [T.RULE_UTF8]),
        (b"\xff\xfe\x00binary", [T.RULE_UTF8]),
        (event(location="Ber\u0000lin"), [T.RULE_UTF8]),  # NUL: not storable as PostgreSQL text
        (b'{"user_id": 7, "product_id":', [T.RULE_JSON]),
        (b"", [T.RULE_JSON]),
        (b"[1, 2, 3]", [T.RULE_JSON]),
        (b'"just a string"', [T.RULE_JSON]),
        (event(user_id=...), [T.RULE_REQUIRED]),
        (event(user_id=0), [T.RULE_USER_ID]),
        (event(user_id="abc"), [T.RULE_USER_ID]),
        (event(user_id=5.5), [T.RULE_USER_ID]),
        (event(user_id=None), [T.RULE_REQUIRED]),
        (event(product_id=-3), [T.RULE_PRODUCT_ID]),
        (event(action="dance"), [T.RULE_ACTION]),
        (event(timestamp="yesterday"), [T.RULE_TS_PARSE]),
        (event(timestamp=1763892000), [T.RULE_TS_PARSE]),
        (event(timestamp="2026-11-23T10:05:01Z"), [T.RULE_TS_FUTURE]),
        (event(location="x" * 201), [T.RULE_LOCATION]),
        (event(device_id="d" * 5000), [T.RULE_STRING_LENGTH]),
        (event(ip_address="999.1.1.1"), [T.RULE_IP]),
        (event(ip_address="fe80::1%eth0"), [T.RULE_IP]),
        (event(ip_address="not an ip"), [T.RULE_IP]),
        (event(user_id=-1, action="x", ip_address="1.2.3"), [T.RULE_USER_ID, T.RULE_ACTION, T.RULE_IP]),
    ],
    ids=lambda v: repr(v)[:40] if not isinstance(v, list) else "",
)
def test_each_rule_names_itself(spark: SparkSession, payload: bytes | None, expected: list[str]) -> None:
    assert violations_of(spark, payload) == expected


@pytest.mark.parametrize(
    "ip", ["10.0.0.7", "255.255.255.255", "::1", "2001:db8::8a2e:370:7334", "::ffff:192.0.2.1", "fe80::"]
)
def test_valid_addresses_pass(spark: SparkSession, ip: str) -> None:
    assert violations_of(spark, event(ip_address=ip)) == []


def test_future_tolerance_is_measured_from_the_broker_timestamp(spark: SparkSession) -> None:
    within = event(timestamp=(NOW + timedelta(seconds=299)).isoformat())
    assert violations_of(spark, within) == []


def test_dead_letters_keep_position_payload_and_every_reason(spark: SparkSession) -> None:
    bad = event(user_id=0, action="x")
    parsed = T.parse_user_events(kafka_rows(spark, [event(), bad]), USER_EVENTS)
    (row,) = T.dead_letters(parsed, "user_events").collect()
    assert (row["kafka_offset"], row["pipeline"], bytes(row["payload"])) == (1, "user_events", bad)
    assert list(row["reasons"]) == [T.RULE_USER_ID, T.RULE_ACTION]
    counts = {r["rule"]: r["records"] for r in T.violation_counts(parsed).collect()}
    assert counts == {T.RULE_USER_ID: 1, T.RULE_ACTION: 1}


def test_enrichment_adds_name_and_region(spark: SparkSession) -> None:
    events = T.valid_events(T.parse_user_events(kafka_rows(spark, [event(), event(user_id=8)]), USER_EVENTS))
    users = spark.createDataFrame([(7, "Ada", "eu-west")], "user_id long, name string, region string")
    rows = {r["user_id"]: (r["user_name"], r["region"]) for r in T.enrich_with_users(events, users).collect()}
    assert rows == {7: ("Ada", "eu-west"), 8: (None, None)}


def events_at(spark: SparkSession, stamps: list[tuple[int, str, str]]) -> DataFrame:
    payloads = [event(user_id=u, timestamp=ts, action=a) for u, ts, a in stamps]
    return T.valid_events(T.parse_user_events(kafka_rows(spark, payloads), USER_EVENTS))


def test_tumbling_window_edges(spark: SparkSession) -> None:
    events = events_at(
        spark,
        [
            (7, "2026-11-23T09:59:54.999Z", "view"),
            (7, "2026-11-23T09:59:55Z", "view"),
            (7, "2026-11-23T09:59:59.999Z", "click"),
        ],
    )
    windows = T.activity_windows(events, Window(5, watermark_s=30), USER_EVENTS.validation.allowed_actions)  # type: ignore[union-attr]
    rows = sorted((r["window_start"], r["event_count"], dict(r["action_counts"])) for r in windows.collect())
    assert rows == [
        (datetime(2026, 11, 23, 9, 59, 50), 1, {"view": 1}),
        (datetime(2026, 11, 23, 9, 59, 55), 2, {"view": 1, "click": 1}),
    ]


def test_sliding_windows_count_an_event_once_per_window(spark: SparkSession) -> None:
    events = events_at(spark, [(7, "2026-11-23T09:59:57Z", "view")])
    windows = T.activity_windows(events, Window(60, watermark_s=120, slide_s=5), ("view",))
    rows = windows.collect()
    assert len(rows) == 12 and {r["event_count"] for r in rows} == {1}
    assert {r["window_seconds"] for r in rows} == {60}


def window_counts(spark: SparkSession, counts: dict[int, int]) -> DataFrame:
    start = datetime(2026, 11, 23, 9, 59)
    rows = [(u, start, 60, n) for u, n in counts.items()]
    return spark.createDataFrame(rows, "user_id long, window_start timestamp, window_seconds int, event_count long")


def test_zscore_flags_a_burst_against_the_other_users(spark: SparkSession) -> None:
    rules = USER_EVENTS.anomaly
    assert rules is not None
    counts = {u: 3 + (u % 3) for u in range(1, 11)} | {99: 40}
    (row,) = T.score_anomalies(window_counts(spark, counts), rules).collect()
    assert row["user_id"] == 99 and row["rule"] == "zscore" and row["zscore"] > rules.zscore_limit
    assert row["severity"] == "critical"


def test_threshold_applies_even_to_a_lone_user(spark: SparkSession) -> None:
    rules = USER_EVENTS.anomaly
    assert rules is not None
    (row,) = T.score_anomalies(window_counts(spark, {5: rules.count_threshold + 1}), rules).collect()
    assert (row["rule"], row["zscore"], row["severity"]) == ("threshold", None, "medium")


def test_ordinary_windows_raise_nothing(spark: SparkSession) -> None:
    rules = USER_EVENTS.anomaly
    assert rules is not None
    assert T.score_anomalies(window_counts(spark, {u: 5 for u in range(1, 20)}), rules).count() == 0
