"""app_logs parsing on small in-memory DataFrames (real local Spark), and on generated lines.

Each table of cases is parsed in one Spark job (a module fixture) and checked case by case.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from spark_jobs.app_logs import transforms as T
from tributary.catalog import APP_LOGS, WEATHER, AppLogRules
from tributary.producers.app_logs import (
    INVALID_KINDS,
    LogMix,
    endpoint_templates,
    expected_rule,
    generate_log_lines,
)

KAFKA_SCHEMA = (
    "key binary, value binary, topic string, partition int, offset long, timestamp timestamp, timestampType int"
)
# The broker's timestamp of every test record: Monday 2026-10-12 12:00 UTC.
NOW = datetime(2026, 10, 12, 12, 0, 0, tzinfo=UTC)
MIGRATION = Path(__file__).resolve().parents[2] / "sql" / "migrations" / "0007.weather-app-logs.sql"
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36"
)


def kafka_rows(spark: SparkSession, payloads: Sequence[bytes | None], ts: datetime = NOW) -> DataFrame:
    rows = [(None, p, "app_logs", 0, i, ts, 0) for i, p in enumerate(payloads)]
    return spark.createDataFrame(rows, KAFKA_SCHEMA)


def parse(spark: SparkSession, payloads: Sequence[bytes | None], ts: datetime = NOW) -> list[Row]:
    return T.parse_log_lines(kafka_rows(spark, payloads, ts), APP_LOGS).orderBy("kafka_offset").collect()


def combined(
    time: str = "10/Oct/2026:13:55:36 +0000",
    request: str = "GET /api/users/123 HTTP/1.1",
    status: str = "200",
    size: str = "2326",
    referrer: str = "-",
    agent: str = CHROME,
    host: str = "203.0.113.7",
    tail: str = "",
) -> bytes:
    return f'{host} - - [{time}] "{request}" {status} {size} "{referrer}" "{agent}"{tail}'.encode()


def api(**changes: Any) -> bytes:
    doc = {
        "timestamp": "2026-10-10T13:55:36.250Z",
        "method": "GET",
        "path": "/api/users/42",
        "status": 200,
        "latency_ms": 12.5,
        "bytes": 512,
        "client_ip": "198.51.100.2",
        "user_agent": CHROME,
        "referrer": "https://example.com/",
        **changes,
    }
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    """A UTC wall time as `collect()` returns it (naive; the test session's time zone is UTC)."""
    return datetime(year, month, day, hour, minute, second, micro)


# Real-world line shapes -> the fields they must parse to (every case is valid).
CORPUS: dict[str, tuple[bytes, dict[str, Any]]] = {
    "apache_ipv4_query": (
        combined(request="GET /api/users/123?x=1&y=2 HTTP/1.1", referrer="https://example.com/start"),
        {
            "event_ts": utc(2026, 10, 10, 13, 55, 36),
            "source_format": "combined",
            "client_ip": "203.0.113.7",
            "method": "GET",
            "path": "/api/users/123",
            "query_string": "x=1&y=2",
            "path_template": "/api/users/{id}",
            "status": 200,
            "status_class": "2xx",
            "latency_ms": None,
            "bytes": 2326,
            "referrer": "https://example.com/start",
            "user_agent": CHROME,
            "hour_of_day": 13,
            "weekday": 6,  # Saturday
        },
    ),
    "ipv6_client_and_dashes": (
        combined(host="2001:db8::1", size="-", agent="-", request="HEAD / HTTP/1.1"),
        {"client_ip": "2001:db8::1", "bytes": 0, "referrer": None, "user_agent": None, "method": "HEAD"},
    ),
    "ipv4_mapped_ipv6_client": (combined(host="::ffff:192.0.2.1"), {"client_ip": "::ffff:192.0.2.1"}),
    "escaped_quotes_in_agent": (
        combined(agent='Mozilla/5.0 (compatible; \\"Link Checker\\" \\\\o/)'),
        {"user_agent": 'Mozilla/5.0 (compatible; "Link Checker" \\o/)'},
    ),
    "escaped_quote_in_request": (
        combined(request='GET /search?q=\\"x\\" HTTP/1.1'),
        {"path": "/search", "query_string": 'q="x"'},
    ),
    "nginx_escapes_stay_as_logged": (combined(agent="curl \\x22beta\\x22"), {"user_agent": "curl \\x22beta\\x22"}),
    "nginx_request_time": (combined(tail=" 0.043"), {"latency_ms": 43.0}),
    "nginx_request_time_zero": (combined(tail=" 0.000"), {"latency_ms": 0.0}),
    "nginx_main_forwarded_for": (
        combined(tail=' "198.51.100.1, 10.0.0.1"'),
        {"latency_ms": None, "client_ip": "203.0.113.7"},
    ),
    "nginx_main_with_request_time": (combined(tail=' "-" 1.5'), {"latency_ms": 1500.0}),
    "offset_plus_0530": (combined(time="10/Oct/2026:19:25:36 +0530"), {"event_ts": utc(2026, 10, 10, 13, 55, 36)}),
    "offset_minus_0800_crosses_midnight": (
        combined(time="09/Oct/2026:22:30:00 -0800"),
        {"event_ts": utc(2026, 10, 10, 6, 30), "hour_of_day": 6, "weekday": 6},
    ),
    "sunday_last_second": (
        combined(time="11/Oct/2026:23:59:59 +0000"),
        {"hour_of_day": 23, "weekday": 7},
    ),
    "monday_midnight_from_local_time": (
        combined(time="12/Oct/2026:02:00:00 +0200"),
        {"event_ts": utc(2026, 10, 12), "hour_of_day": 0, "weekday": 1},
    ),
    "http2_uuid_trailing_slash_no_body": (
        combined(request="DELETE /api/orders/3F2A9C1E-7B4D-4E8A-9C1F-2A3B4C5D6E7F/ HTTP/2.0", status="204", size="-"),
        {
            "path": "/api/orders/3F2A9C1E-7B4D-4E8A-9C1F-2A3B4C5D6E7F/",
            "path_template": "/api/orders/{uuid}",
            "status_class": "2xx",
            "bytes": 0,
        },
    ),
    "hash_in_file_name": (
        combined(request="GET /static/js/app.0123456789abcdef0123.js?v=3 HTTP/1.1", status="304", size="-"),
        {"path_template": "/static/js/app.{hash}.js", "status_class": "3xx", "query_string": "v=3"},
    ),
    "absolute_form_target": (
        combined(request="GET http://shop.example.com/api/products?page=2 HTTP/1.1"),
        {"path": "/api/products", "query_string": "page=2", "path_template": "/api/products"},
    ),
    "absolute_form_without_path": (combined(request="GET https://example.com HTTP/1.1"), {"path": "/"}),
    "http_0_9_without_protocol": (combined(request="GET /"), {"method": "GET", "path": "/", "path_template": "/"}),
    "options_asterisk": (combined(request="OPTIONS * HTTP/1.1", status="204"), {"path": "*", "path_template": "*"}),
    "switching_protocols": (combined(request="GET /ws HTTP/1.1", status="101", size="0"), {"status_class": "1xx"}),
    "server_error": (combined(status="599"), {"status": 599, "status_class": "5xx"}),
    "authenticated_user_field": (
        b'203.0.113.7 - alice [10/Oct/2026:13:55:36 +0000] "GET / HTTP/1.1" 200 5 "-" "-"',
        {},
    ),
    "crlf_and_spaces_around": (b"  " + combined() + b"\r\n", {"path": "/api/users/123"}),
    "json_api_line": (
        api(),
        {
            "event_ts": utc(2026, 10, 10, 13, 55, 36, 250_000),
            "source_format": "json",
            "client_ip": "198.51.100.2",
            "method": "GET",
            "path": "/api/users/42",
            "query_string": None,
            "path_template": "/api/users/{id}",
            "status": 200,
            "status_class": "2xx",
            "latency_ms": 12.5,
            "bytes": 512,
            "referrer": "https://example.com/",
            "user_agent": CHROME,
            "hour_of_day": 13,
            "weekday": 6,
        },
    ),
    "json_extra_fields": (
        api(level="info", trace={"id": "abc", "spans": [1, 2]}, tags=["a"], request_id="r-1"),
        {"status": 200},
    ),
    "json_offset_timestamp": (
        api(timestamp="2026-10-11T01:55:36.5+12:00"),
        {"event_ts": utc(2026, 10, 10, 13, 55, 36, 500_000)},
    ),
    "json_timestamp_without_zone_is_utc": (
        api(timestamp="2026-10-10 13:55:36"),
        {"event_ts": utc(2026, 10, 10, 13, 55, 36)},
    ),
    "json_status_as_string": (api(status="404"), {"status": 404, "status_class": "4xx"}),
    "json_query_in_path": (
        api(path="/api/users/42/orders/?expand=items&page=3"),
        {
            "path": "/api/users/42/orders/",
            "query_string": "expand=items&page=3",
            "path_template": "/api/users/{id}/orders",
        },
    ),
    "json_only_required_fields": (
        api(latency_ms=..., bytes=..., client_ip=..., user_agent=..., referrer=...),
        {"latency_ms": None, "bytes": None, "client_ip": None, "user_agent": None, "referrer": None},
    ),
    "json_nulls_and_dashes": (
        api(referrer=None, user_agent="-", client_ip=None, latency_ms=None),
        {"referrer": None, "user_agent": None, "client_ip": None, "latency_ms": None},
    ),
    "json_integer_latency_and_ipv6": (api(latency_ms=7, client_ip="2001:db8::7"), {"latency_ms": 7.0}),
    "json_tiny_latency_in_exponent_form": (api(latency_ms=1e-05), {"latency_ms": 1e-05}),
}


@pytest.fixture(scope="module")
def corpus(spark: SparkSession) -> dict[str, Row]:
    rows = parse(spark, [line for line, _ in CORPUS.values()])
    return dict(zip(CORPUS, rows, strict=True))


@pytest.mark.parametrize("case", list(CORPUS))
def test_real_world_lines_parse(corpus: dict[str, Row], case: str) -> None:
    row = corpus[case]
    assert row["violations"] == [], row
    expected = CORPUS[case][1]
    assert {name: row[name] for name in expected} == expected


def over(limit: int) -> bytes:
    """A valid combined line of exactly `limit` bytes."""
    line = combined(request="GET /search?q= HTTP/1.1")
    return combined(request="GET /search?q=" + "a" * (limit - len(line)) + " HTTP/1.1")


# Malformed lines -> exactly the rules they fail, in ALL_RULES order.
RULE_CASES: dict[str, tuple[bytes | None, list[str]]] = {
    "null_value": (None, [T.RULE_UTF8]),
    "binary": (b"\xff\xfe\x00\x01abc", [T.RULE_UTF8]),
    "nul_in_combined_line": (combined(agent="a\x00b"), [T.RULE_UTF8]),
    "escaped_nul_in_json": (api(user_agent="a\x00b"), [T.RULE_UTF8]),
    "nul_escape_as_text_in_combined": (combined(request="GET /?q=\\u0000 HTTP/1.1"), []),
    "exactly_the_limit": (over(APP_LOGS.validation.max_line_length), []),  # type: ignore[union-attr]
    "one_byte_over": (over(APP_LOGS.validation.max_line_length + 1), [T.RULE_LENGTH]),  # type: ignore[union-attr]
    "over_long_binary": (b"\xff" * 20_000, [T.RULE_LENGTH]),
    "empty": (b"", [T.RULE_UNPARSEABLE]),
    "whitespace": (b" \t\r\n", [T.RULE_UNPARSEABLE]),
    "garbage": (b"Connection reset by peer", [T.RULE_UNPARSEABLE]),
    "truncated_combined": (combined()[:60], [T.RULE_UNPARSEABLE]),
    "unterminated_agent": (combined()[:-1], [T.RULE_UNPARSEABLE]),
    "extra_trailing_fields": (combined(tail=' "a" "b" 0.1'), [T.RULE_UNPARSEABLE]),
    "control_character": (combined(agent="bad\x01agent"), [T.RULE_UNPARSEABLE]),
    "truncated_json": (api()[:30], [T.RULE_UNPARSEABLE]),
    "json_array": (b"[" + api() + b"]", [T.RULE_UNPARSEABLE]),
    "json_without_api_fields": (b'{"msg": "hello"}', [T.RULE_REQUIRED]),
    "json_missing_status": (api(status=...), [T.RULE_REQUIRED]),
    "json_null_path": (api(path=None), [T.RULE_REQUIRED]),
    "tls_handshake": (combined(request="\\x16\\x03\\x01\\x02\\x00\\x01", status="400", agent="-"), [T.RULE_REQUEST]),
    "no_request": (combined(request="-", status="408", size="0", agent="-"), [T.RULE_REQUEST]),
    "space_in_target": (combined(request="GET /a b HTTP/1.1"), [T.RULE_REQUEST]),
    "not_http": (combined(request="GET / SPDY/3"), [T.RULE_REQUEST]),
    "method_with_digit": (combined(request="G3T / HTTP/1.1"), [T.RULE_METHOD]),
    "json_empty_method": (api(method=""), [T.RULE_METHOD]),
    "json_relative_path": (api(path="index.html"), [T.RULE_PATH]),
    "connect_authority_form": (combined(request="CONNECT example.com:443 HTTP/1.1"), [T.RULE_PATH]),
    "status_600": (combined(status="600"), [T.RULE_STATUS]),
    "status_099": (combined(status="099"), [T.RULE_STATUS]),
    "status_letters": (combined(status="2OO"), [T.RULE_STATUS]),
    "json_status_fraction": (api(status=200.5), [T.RULE_STATUS]),
    "json_status_text": (api(status="OK"), [T.RULE_STATUS]),
    "bad_clf_time": (combined(time="32/Foo/2026:25:61:00 +0000"), [T.RULE_TS_PARSE]),
    "clf_time_without_offset": (combined(time="10/Oct/2026:13:55:36"), [T.RULE_TS_PARSE]),
    "json_epoch_seconds": (api(timestamp=1760104536), [T.RULE_TS_PARSE]),
    "json_words": (api(timestamp="yesterday noon"), [T.RULE_TS_PARSE]),
    "future": (api(timestamp="2099-01-01T00:00:00Z"), [T.RULE_TS_FUTURE]),
    "within_skew": (api(timestamp="2026-10-12T12:04:59Z"), []),
    "beyond_skew": (api(timestamp="2026-10-12T12:05:01Z"), [T.RULE_TS_FUTURE]),
    "hostname_client": (combined(host="crawl-66-249-66-1.googlebot.com"), [T.RULE_IP]),
    "octet_over_255": (api(client_ip="999.1.1.1"), [T.RULE_IP]),
    "negative_latency": (api(latency_ms=-3.5), [T.RULE_LATENCY]),
    "latency_text": (combined(tail=" fast"), [T.RULE_LATENCY]),
    "negative_bytes": (api(bytes=-1), [T.RULE_BYTES]),
    "bytes_with_unit": (combined(size="12kb"), [T.RULE_BYTES]),
    "json_fractional_bytes": (api(bytes=1.5), [T.RULE_BYTES]),
    "several_fields": (
        api(method="P@ST", status=700, client_ip="unknown", bytes="lots"),
        [T.RULE_METHOD, T.RULE_STATUS, T.RULE_IP, T.RULE_BYTES],
    ),
}


@pytest.fixture(scope="module")
def rule_rows(spark: SparkSession) -> dict[str, Row]:
    rows = parse(spark, [line for line, _ in RULE_CASES.values()])
    return dict(zip(RULE_CASES, rows, strict=True))


@pytest.mark.parametrize("case", list(RULE_CASES))
def test_each_rule(rule_rows: dict[str, Row], case: str) -> None:
    assert list(rule_rows[case]["violations"]) == RULE_CASES[case][1]


def test_rules_are_listed_once_each() -> None:
    assert len(set(T.ALL_RULES)) == len(T.ALL_RULES)
    assert {rule for _, rules in RULE_CASES.values() for rule in rules} == set(T.ALL_RULES)


def test_malformed_lines_keep_their_payload_and_position(rule_rows: dict[str, Row]) -> None:
    row = rule_rows["binary"]
    assert bytes(row["payload"]) == b"\xff\xfe\x00\x01abc" and row["topic"] == "app_logs"
    assert row["source_format"] is None and rule_rows["truncated_json"]["source_format"] == "json"


def test_every_generated_invalid_kind_fails_exactly_its_rule(spark: SparkSession) -> None:
    mix = LogMix(invalid_share=1.0, json_share=0.5)
    generated = list(
        generate_log_lines(len(INVALID_KINDS) * 3, seed=5, start=NOW - timedelta(hours=1), lines_per_s=5, mix=mix)
    )
    for g, row in zip(generated, parse(spark, [g.value for g in generated]), strict=True):
        assert list(row["violations"]) == [expected_rule(g.kind)], (g.kind, g.value[:200])


def test_generated_valid_lines_parse_cleanly_and_faithfully(spark: SparkSession) -> None:
    # 3,000 lines over ~41 hours: every offset, format, flavour, endpoint, agent; crosses midnight.
    start = NOW - timedelta(hours=42)
    mix = LogMix(json_share=0.4, error_burst_share=0.05)
    generated = list(generate_log_lines(3_000, seed=21, start=start, lines_per_s=0.02, mix=mix))
    rows = parse(spark, [g.value for g in generated])
    templates = endpoint_templates()
    for g, row in zip(generated, rows, strict=True):
        assert row["violations"] == [], (g.kind, g.value)
        is_json = g.value.startswith(b"{")
        t = g.event_time.astimezone(UTC).replace(tzinfo=None)
        assert row["event_ts"] == (
            t.replace(microsecond=t.microsecond // 1000 * 1000) if is_json else t.replace(microsecond=0)
        )
        assert (row["hour_of_day"], row["weekday"]) == (t.hour, t.isoweekday())
        assert row["source_format"] == ("json" if is_json else "combined")
        assert row["client_ip"].encode() == g.key
        assert row["path_template"] in templates, row["path"]
        assert row["status_class"] == f"{row['status'] // 100}xx"
        if g.kind == "error_burst":
            assert (row["method"], row["path_template"], row["status_class"]) == ("POST", "/api/checkout", "5xx")
    assert {r["weekday"] for r in rows} == {6, 7, 1}  # Saturday to Monday


def test_hour_and_weekday_ignore_the_session_time_zone(spark: SparkSession) -> None:
    spark.conf.set("spark.sql.session.timeZone", "America/Los_Angeles")
    try:
        lines = [combined(time="12/Oct/2026:02:00:00 +0200"), api(timestamp="2026-10-11T23:30:00Z")]
        parsed = T.parse_log_lines(kafka_rows(spark, lines), APP_LOGS)
        rows = parsed.select(F.unix_seconds("event_ts").alias("s"), "hour_of_day", "weekday").collect()
    finally:
        spark.conf.set("spark.sql.session.timeZone", "UTC")
    assert [tuple(r) for r in rows] == [
        (int(datetime(2026, 10, 12, tzinfo=UTC).timestamp()), 0, 1),
        (int(datetime(2026, 10, 11, 23, 30, tzinfo=UTC).timestamp()), 23, 7),
    ]


def test_formats_outside_the_catalog_are_unparseable(spark: SparkSession) -> None:
    json_only = dataclasses.replace(
        APP_LOGS, validation=AppLogRules(formats=("json",), max_line_length=16_384, max_future_skew_s=300)
    )
    rows = T.parse_log_lines(kafka_rows(spark, [combined(), api()]), json_only).orderBy("kafka_offset").collect()
    assert [list(r["violations"]) for r in rows] == [[T.RULE_UNPARSEABLE], []]


def test_pipeline_without_app_log_rules_or_with_unknown_format_is_refused(spark: SparkSession) -> None:
    df = kafka_rows(spark, [])
    with pytest.raises(TypeError, match="app-log validation rules"):
        T.parse_log_lines(df, WEATHER)
    syslog = dataclasses.replace(
        APP_LOGS, validation=AppLogRules(formats=("combined", "syslog"), max_line_length=1, max_future_skew_s=1)
    )
    with pytest.raises(ValueError, match=r"unknown log formats \['syslog'\]"):
        T.parse_log_lines(df, syslog)


PATHS = {
    "/": "/",
    "/api/users/123": "/api/users/{id}",
    "/api/users/123/": "/api/users/{id}",
    "/api/users/123/orders?page=2": "/api/users/{id}/orders",
    "//api//products///": "/api/products",
    "/api/v2/items/0042#reviews": "/api/v2/items/{id}",
    "/2026/10/10/post": "/{id}/{id}/{id}/post",
    "/static/img/products/77.jpg": "/static/img/products/{id}.jpg",
    "/static/img/products/77.jpg/": "/static/img/products/{id}.jpg",
    "/api/orders/3f2a9c1e-7b4d-4e8a-9c1f-2a3b4c5d6e7f/items": "/api/orders/{uuid}/items",
    "/files/3f2a9c1e-7b4d-4e8a-9c1f-2a3b4c5d6e7f.pdf": "/files/{uuid}.pdf",
    "/blobs/da39a3ee5e6b4b0d3255bfef95601890afd80709": "/blobs/{hash}",
    "/static/js/main.8f3e2a1b9c7d4e5f.chunk.js": "/static/js/main.{hash}.chunk.js",
    "/commits/0123456789abcdef": "/commits/{hash}",
    "/deadbeef": "/deadbeef",  # too short for a hash
    "/ids/12345678901234567890": "/ids/{id}",  # all digits: an id, however long
    "/users/jane.doe+tag@example.co.uk/settings": "/users/{email}/settings",
    "/auth/reset/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.Qm9keQ_x-Y": "/auth/reset/{token}",
    "/blog/getting-started-with-spark-4-and-kafka-streams": "/blog/getting-started-with-spark-4-and-kafka-streams",
    "/v1/health": "/v1/health",
    "*": "*",
}


def test_template_path(spark: SparkSession) -> None:
    df = spark.createDataFrame([(p,) for p in PATHS], "path string")
    templated = {r["path"]: r["t"] for r in df.select("path", T.template_path(F.col("path")).alias("t")).collect()}
    assert templated == PATHS


def test_status_class(spark: SparkSession) -> None:
    statuses = [100, 199, 200, 302, 404, 599, 600, 99, None]
    df = spark.createDataFrame([(s,) for s in statuses], "status int")
    classes = [r[0] for r in df.select(T.status_class(F.col("status"))).collect()]
    assert classes == ["1xx", "1xx", "2xx", "3xx", "4xx", "5xx", None, None, None]


def test_valid_logs_have_the_raw_table_columns(spark: SparkSession) -> None:
    valid = T.valid_logs(T.parse_log_lines(kafka_rows(spark, [combined(), b"junk", api()]), APP_LOGS))
    assert tuple(valid.columns) == T.LOG_COLUMNS
    assert valid.count() == 2
    types = dict(valid.dtypes)
    assert (types["status"], types["bytes"], types["latency_ms"], types["hour_of_day"]) == (
        "int",
        "bigint",
        "double",
        "smallint",
    )


def test_raw_columns_are_the_migration_columns_in_order() -> None:
    table = re.search(r"CREATE TABLE app_log_events \((.*?)\) PARTITION BY", MIGRATION.read_text(), re.S)
    assert table
    names = [line.split()[0] for line in table.group(1).strip().splitlines() if not line.strip().startswith("PRIMARY")]
    assert tuple(n for n in names if n != "ingested_at") == T.RAW_COLUMNS
    assert tuple(c for c in T.RAW_COLUMNS if c not in T.UA_COLUMNS) == T.LOG_COLUMNS
