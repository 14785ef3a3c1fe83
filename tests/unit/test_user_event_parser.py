"""The Arrow-batch user-event parser and the Arrow line builders, without Spark."""

from __future__ import annotations

import base64
import csv
import io
import json
import random
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from spark_jobs.sinks.arrow_lines import array_literal, csv_payload, dead_letter_payloads, iso_millis
from spark_jobs.user_events import parse as P
from spark_jobs.user_events.merge import BUCKET_COLUMNS, bucket_rows
from tributary.catalog import USER_EVENTS

NOW = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)
ACTIONS = USER_EVENTS.validation.allowed_actions  # type: ignore[union-attr]


def us(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-23T09:59:58Z", datetime(2026, 11, 23, 9, 59, 58, tzinfo=UTC)),
        ("2026-11-23T09:59:58.123Z", datetime(2026, 11, 23, 9, 59, 58, 123000, tzinfo=UTC)),
        ("2026-11-23 09:59:58.1234567", datetime(2026, 11, 23, 9, 59, 58, 123456, tzinfo=UTC)),
        ("2026-11-23T10:59:58+01:00", datetime(2026, 11, 23, 9, 59, 58, tzinfo=UTC)),
        ("2026-11-23T04:29:58-0530", datetime(2026, 11, 23, 9, 59, 58, tzinfo=UTC)),
        ("2026-11-23T09:59:58 UTC", datetime(2026, 11, 23, 9, 59, 58, tzinfo=UTC)),
        ("2026-1-3T9:5", datetime(2026, 1, 3, 9, 5, tzinfo=UTC)),
        ("  2026-11-23  ", datetime(2026, 11, 23, tzinfo=UTC)),
        ("1969-12-31T23:59:59.5Z", datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC)),
    ],
)
def test_iso_timestamps_parse_to_utc_microseconds(text: str, expected: datetime) -> None:
    assert P.timestamp_us(text) == us(expected)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "31/02/2026 25:61",
        "2026-02-30T00:00:00Z",
        "2026-13-01",
        "20261123",
        "2026-W48-1",
        "2026-11-23T25:00",
    ],
)
def test_anything_else_is_not_a_timestamp(text: str) -> None:
    assert P.timestamp_us(text) is None


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-23T09:59:58.123Z",
        "2026-11-23t09:59:58.123z",
        "2026-12-31T23:59:59.999Z",
        "1969-12-31T23:59:59.500Z",
        "0001-01-01T00:00:00.000Z",
        "9999-12-31T23:59:59.999Z",
        "2026-11-23T09:59:60.000Z",  # a leap second: datetime refuses it, so does the short cut
        "2026-11-23T09:60:00.000Z",
        "2026-02-30T09:59:58.123Z",
        "2026-11-23T24:00:00.000Z",
        "2026-11-23T09:59:5\uff18.123Z",  # a full-width digit
        "\u0662\u0660\u0662\u0666-11-23T09:59:58.123Z",  # Arabic-Indic digits
        "2026-11-23T09:59:+1.123Z",
        "2026-11-23T09:59:1_.123Z",
        "+026-11-23T09:59:58.123Z",
        "2026-11-23 09:59:58.123Z",
        "2026-11-23T09:59:58.123+",
    ],
)
def test_the_producer_shape_short_cut_decides_as_the_full_parser(text: str) -> None:
    assert P._canonical_timestamp_us(text) == P.timestamp_us(text)


def kafka_batch(payloads: list[bytes | None]) -> pa.RecordBatch:
    rows = len(payloads)
    return pa.RecordBatch.from_pydict(
        {
            "value": pa.array(payloads, pa.binary()),
            "topic": pa.array(["user_events"] * rows),
            "partition": pa.array([0] * rows, pa.int32()),
            "offset": pa.array(range(rows), pa.int64()),
            "timestamp": pa.array([us(NOW)] * rows, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        }
    )


def doc(**changes: object) -> bytes:
    base = {
        "user_id": 7,
        "product_id": 42,
        "action": ACTIONS[0],
        "timestamp": "2026-11-23T09:59:58Z",
        "device_id": 1234,
        "device_type": True,
        "location": {"city": "Berlin"},
        "user_segment": "premium",
        "ip_address": "10.0.0.7",
    }
    return json.dumps({**base, **changes}).encode()


def test_values_of_other_json_types_are_kept_as_their_text() -> None:
    parsed = P.UserEventParser(USER_EVENTS).parse(kafka_batch([doc()])).to_pylist()[0]
    assert parsed["violations"] == []
    assert (parsed["device_id"], parsed["device_type"], parsed["location"]) == ("1234", "true", '{"city":"Berlin"}')


@pytest.mark.parametrize(
    ("payload", "rules"),
    [
        (doc(user_id=True), [P.RULE_USER_ID]),  # a boolean is no id, though Python calls it an int
        (doc(user_id=2**63), [P.RULE_USER_ID]),  # beyond bigint
        (doc(product_id="42"), [P.RULE_PRODUCT_ID]),
        (doc(timestamp=1763892000.5), [P.RULE_TS_PARSE]),
        (doc(ip_address="10.0.0.7\n"), [P.RULE_IP]),  # PostgreSQL's inet would refuse it in the COPY
        (b'{"user_id": 1} trailing', [P.RULE_JSON]),
        (b"\xc3\x28", [P.RULE_UTF8]),
    ],
)
def test_edge_cases_name_their_rule(payload: bytes, rules: list[str]) -> None:
    (parsed,) = P.UserEventParser(USER_EVENTS).parse(kafka_batch([payload])).to_pylist()
    assert parsed["violations"] == rules


def test_csv_payload_is_postgres_copy_input() -> None:
    table = pa.table(
        {
            "ts": pa.array([us(NOW), None], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "text": ['a "quoted", multi\nline', ""],
            "n": [1, None],
        }
    )
    rows = list(csv.reader(io.StringIO(csv_payload(table, ["ts", "text", "n"]).decode())))
    assert rows == [["2026-11-23 10:00:00.000000Z", 'a "quoted", multi\nline', "1"], ["", "", ""]]
    assert b',"",\n' in csv_payload(table, ["ts", "text", "n"]), 'empty text is "" (NULL is unquoted)'
    assert array_literal(pa.array([[3, 1], []])).to_pylist() == ["{3,1}", "{}"]


def test_dead_letters_and_their_messages() -> None:
    parsed = P.UserEventParser(USER_EVENTS).parse(kafka_batch([doc(user_id=0), None]))
    dead, outbox = dead_letter_payloads(
        pa.Table.from_batches([parsed]), pipeline="user_events", dead_letter_topic="dlq", dlq_payload_bytes=4
    )
    first, second = csv.reader(io.StringIO(dead.decode()))
    assert first[:5] == ["user_events", "0", "0", "user_events", "2026-11-23 10:00:00.000000Z"]
    assert first[5] == "\\x" + doc(user_id=0).hex() and first[6] == "{user_id_positive}"
    assert second[5] == "" and second[6] == "{payload_utf8}"
    messages = list(csv.reader(io.StringIO(outbox.decode())))
    assert [m[:3] for m in messages] == [
        ["dlq:user_events:0:0", "dlq", "user_events:0:0"],
        ["dlq:user_events:0:1", "dlq", "user_events:0:1"],
    ]
    message = json.loads(messages[0][3])
    assert message["kafka_timestamp"] == "2026-11-23T10:00:00.000Z" and message["reasons"] == ["user_id_positive"]
    assert base64.b64decode(message["payload_base64"]) == doc(user_id=0)[:4]
    assert message["payload_bytes"] == len(doc(user_id=0))
    assert "payload_base64" not in json.loads(messages[1][3]), "a null payload is left out, as Spark's to_json does"


@pytest.mark.parametrize(
    "moment", [NOW, datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=UTC), datetime(2000, 2, 29, tzinfo=UTC)]
)
def test_iso_millis_matches_isoformat(moment: datetime) -> None:
    assert iso_millis(us(moment)) == moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_buckets_group_like_the_merge_statement() -> None:
    events = pa.table(
        {
            "event_ts": pa.array([us(NOW + timedelta(seconds=s)) for s in (0.5, 4.9, 1.0, 5.0, -2.0)], pa.int64()).cast(
                pa.timestamp("us", tz="UTC")
            ),
            "user_id": [1, 1, 1, 2, 1],
            "product_id": [10, 11, 10, 10, 3],
            "action": [ACTIONS[0], ACTIONS[1], ACTIONS[0], ACTIONS[0], ACTIONS[0]],
        }
    )
    grouped, late = bucket_rows(events, ACTIONS, 5, NOW)  # the bucket before NOW is closed
    assert late == 1 and grouped.column_names == list(BUCKET_COLUMNS)
    rows = sorted(grouped.to_pylist(), key=lambda r: r["user_id"])
    assert [(r["user_id"], r["event_count"], r["bucket_start"]) for r in rows] == [
        (1, 3, NOW),
        (2, 1, NOW + timedelta(seconds=5)),
    ]
    assert sorted(rows[0]["products"].strip("{}").split(",")) == ["10", "11"]
    counts = [0] * len(ACTIONS)
    counts[0], counts[1] = 2, 1
    assert rows[0]["action_counts"] == "{" + ",".join(map(str, counts)) + "}"
    assert rows[0]["first_event_ts"] == NOW + timedelta(seconds=0.5) and rows[0]["last_event_ts"] == NOW + timedelta(
        seconds=4.9
    )


def test_typed_fast_path_decides_as_the_generic_path() -> None:
    """Payloads whose fields have the usual types take a typed decoder; the rest the generic one.

    Both must give the same row, so every payload is parsed as it is and once more with the
    typed decoder refusing everything (all through the generic path).
    """
    rng = random.Random(11)
    odd = [None, 0, -1, 2**63, 1.0, True, "", "12", [1], {"a": 1}, "10.0.0.1", "::1", "x" * 300]
    odd += ["2026-11-23T09:59:58.123Z", "2026-02-30T09:59:58.123Z", "2026-11-23", "2099-01-01T00:00:00.000Z"]
    usual = json.loads(doc(device_id="d-1", device_type="mobile", location="Berlin"))
    payloads: list[bytes | None] = [None]
    for _ in range(3000):
        fields = {
            name: (value if rng.random() < 0.6 else rng.choice(odd))
            for name, value in usual.items()
            if rng.random() > 0.05
        }
        payload = json.dumps(fields).encode()
        roll = rng.random()
        if roll < 0.05:
            payload = payload[: rng.randint(0, len(payload))]
        elif roll < 0.08:
            payload = payload.replace(b'"d-1"', b'"\\u0000"')
        elif roll < 0.1:
            payload += b"\xff"
        payloads.append(payload)
    batch = kafka_batch(payloads)
    parser = P.UserEventParser(USER_EVENTS)
    typed = parser.parse(batch)
    original = P._typed_fields
    try:
        P._typed_fields = lambda value: None  # type: ignore[assignment]
        generic = parser.parse(batch)
    finally:
        P._typed_fields = original
    assert typed.to_pylist() == generic.to_pylist()
    valid = sum(1 for row in typed.to_pylist() if not row["violations"])
    assert 100 < valid < len(payloads) - 100  # both kinds are really exercised
