"""Compaction without services: retention arithmetic, index names, checksum SQL and CLI options."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from psycopg import sql

from spark_jobs.batch.compact import DayLocation, parse_args
from tributary.catalog import USER_EVENTS
from tributary.compaction import (
    COMPACT_JOB,
    ChecksumSpec,
    Metric,
    _pg_metric,
    _value_kind,
    checksum_mismatches,
    compact_job_environment,
    index_day,
    normalize_checksum,
    oldest_hot_day,
)


def test_days_before_the_hot_retention_are_archived() -> None:
    assert oldest_hot_day(date(2026, 3, 31), 30) == date(2026, 3, 1)
    assert oldest_hot_day(date(2026, 3, 1), 1) == date(2026, 2, 28)
    with pytest.raises(ValueError, match="at least today"):
        oldest_hot_day(date(2026, 3, 1), 0)


@pytest.mark.parametrize(
    ("name", "day"),
    [
        ("tributary-user-events-2026.01.31", date(2026, 1, 31)),
        ("tributary-user-events-2026.02.30", None),  # not a date
        ("tributary-user-events-2026.01.31-restored", None),
        ("tributary-user-events-x", None),
        ("tributary-anomalies-2026.01.31", None),  # another family
    ],
)
def test_only_daily_indices_of_the_family_have_a_day(name: str, day: date | None) -> None:
    assert index_day(USER_EVENTS.indices["events"], name) == day


@pytest.mark.parametrize(
    ("pg_type", "kind"),
    [
        ("bigint", "sum"),
        ("integer", "sum"),
        ("timestamp with time zone", "epoch_micros"),
        ("date", "epoch_days"),
        ("boolean", "true_count"),
        ("bytea", "bytes"),
        ("text", "utf8_bytes"),
        ("inet", "utf8_bytes"),
        ("character varying(20)", "utf8_bytes"),
        ("double precision", None),  # float sums depend on the order of addition
        ("numeric", None),
        ("timestamp without time zone", None),
    ],
)
def test_each_column_type_gets_an_exact_aggregate_or_only_its_count(pg_type: str, kind: str | None) -> None:
    assert _value_kind(pg_type) == kind


def test_checksum_sql_uses_the_output_text_of_values_and_exact_sums() -> None:
    rendered = {kind: _pg_metric(Metric(kind, "c")).as_string(None) for kind in ("utf8_bytes", "epoch_micros", "sum")}
    assert rendered["utf8_bytes"] == """sum(octet_length(convert_to(format('%s', "c"), 'UTF8'))::numeric)"""
    assert rendered["epoch_micros"] == 'sum(extract(epoch FROM "c") * 1000000)'
    assert rendered["sum"] == 'sum("c"::numeric)'
    spec = ChecksumSpec(
        columns=(("topic", "text"), ("kafka_offset", "bigint")),
        metrics=(Metric("count", "topic"), Metric("sum", "kafka_offset")),
        identity=("topic", "kafka_offset", "event_ts"),
        position_key=("topic", "kafka_offset"),
    )
    query = spec.pg_select("user_events_20260101").as_string(None)
    assert query.startswith('SELECT count(*), count(DISTINCT ("topic", "kafka_offset")), count("topic"),')
    assert query.endswith('FROM "user_events_20260101"')
    assert spec.names() == ["rows", "distinct_keys", "count:topic", "sum:kafka_offset"]
    assert isinstance(spec.pg_select("t"), sql.Composed)


def test_checksums_compare_as_plain_integers() -> None:
    from decimal import Decimal

    assert normalize_checksum(["rows", "sum:x"], [3, Decimal("1577934245123456.000000")]) == {
        "rows": 3,
        "sum:x": 1577934245123456,
    }
    assert normalize_checksum(["sum:x"], [None]) == {"sum:x": 0}
    with pytest.raises(ValueError, match="not an integer"):
        normalize_checksum(["sum:x"], [Decimal("1.5")])
    expected = {"rows": 10, "distinct_keys": 10, "sum:x": 7}
    assert checksum_mismatches(expected, dict(expected)) == {}
    assert list(checksum_mismatches(expected, {"rows": 9, "distinct_keys": 9, "sum:x": 7})) == ["rows", "distinct_keys"]
    assert checksum_mismatches({"rows": 1}, {}) == {"rows": [1, None]}


def test_lake_layout_keeps_staging_out_of_readers_way() -> None:
    location = DayLocation("s3a://lake/raw", "user_events", date(2026, 1, 2))
    assert location.batch_dir("20260301T000000Z-r7") == (
        "s3a://lake/raw/user_events/day=2026-01-02/batch=20260301T000000Z-r7"
    )
    assert location.staging_dir("b") == "s3a://lake/raw/user_events/_staging/day=2026-01-02/batch=b"


def test_command_line() -> None:
    assert parse_args([]).dry_run is False
    assert parse_args(["--dry-run"]).dry_run is True
    assert parse_args(["--dry-run=false"]).dry_run is False  # how the DAG passes its param
    assert parse_args(["--dry-run=True", "--today", "2026-01-02"]).today == date(2026, 1, 2)
    with pytest.raises(SystemExit):
        parse_args(["--dry-run=maybe"])


def test_spark_submit_finds_the_job_and_this_interpreter() -> None:
    env = compact_job_environment({"PATH": "/usr/bin", "PYTHONPATH": "/extra"})
    assert env["PATH"].split(":")[1:] == ["/usr/bin"]
    assert (Path(env["PATH"].split(":")[0]) / "spark-submit").exists()
    assert env["PYTHONPATH"].endswith(":/extra")
    assert COMPACT_JOB.is_file()
