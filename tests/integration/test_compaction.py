"""Compaction against the real PostgreSQL, the session's ES-API server and a local Spark.

Old day partitions of `user_events` are archived to Parquet, verified and dropped; the hot days
stay; a rerun changes nothing; an export that outlived its partition is re-verified, not
rewritten; a corrupted export (a Parquet file deleted before verification) keeps the data and
fails the run.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pyspark.sql import SparkSession

from spark_jobs.batch.compact import CompactionOptions, run_compaction
from tributary.catalog import PLATFORM, USER_EVENTS
from tributary.clients import es_client, pg_connect
from tributary.compaction import checksum_spec, pg_checksum
from tributary.compaction_report import CompactionReport, latest_report_for_run, list_reports, load_report
from tributary.migrations import apply_migrations
from tributary.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RAW = USER_EVENTS.tables.raw
TODAY = datetime.now(UTC).date()
HOT = USER_EVENTS.batch.hot_retention_days
OLD_A = TODAY - timedelta(days=HOT + 3)
OLD_B = TODAY - timedelta(days=HOT + 1)
OLDEST_HOT = TODAY - timedelta(days=HOT)  # the boundary: still hot
RECENT = TODAY - timedelta(days=1)


def partition_name(day: date) -> str:
    return f"{RAW}_{day:%Y%m%d}"


def seed_day(pg_url: str, day: date, rows: int, *, first_offset: int = 0, duplicates: int = 0) -> None:
    """`rows` events on `day` (positions first_offset.., spread over the day), plus `duplicates`
    rows that repeat the first positions with another event_ts (the same source position twice)."""
    with pg_connect(pg_url, autocommit=True) as conn:
        conn.execute("SELECT ensure_day_partition(%s, %s)", (RAW, day))
        conn.execute(
            f"""INSERT INTO {RAW} (topic, kafka_partition, kafka_offset, kafka_timestamp, event_ts, user_id,
                                   product_id, action, device_id, device_type, location, user_segment, ip_address)
                SELECT 'user_events', g %% 3, %(first)s + g, %(start)s + g * interval '1 second',
                       %(start)s + (g * 337 %% 86400) * interval '1 second' + g * interval '1 microsecond',
                       1 + g %% 50, 100 + g %% 7, (ARRAY['view','click','purchase'])[1 + g %% 3],
                       'dev-' || g, CASE WHEN g %% 4 = 0 THEN NULL ELSE 'mobile' END, 'Zürich ' || g,
                       'gold', ('10.0.' || (g %% 250) || '.' || (g %% 200 + 1))::inet
                FROM generate_series(0, %(rows)s - 1) AS g""",
            {"first": first_offset, "start": datetime.combine(day, datetime.min.time(), tzinfo=UTC), "rows": rows},
        )
        if duplicates:
            conn.execute(
                f"""INSERT INTO {RAW} (topic, kafka_partition, kafka_offset, event_ts, user_id, product_id, action)
                    SELECT topic, kafka_partition, kafka_offset, event_ts + interval '1 millisecond', user_id,
                           product_id, action
                    FROM {partition_name(day)} ORDER BY kafka_offset LIMIT %s""",
                (duplicates,),
            )


def partition_exists(pg_url: str, day: date) -> bool:
    with pg_connect(pg_url) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (partition_name(day),)).fetchone()
    return bool(row and row[0])


def partition_rows(pg_url: str, day: date) -> int:
    with pg_connect(pg_url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {partition_name(day)}").fetchone()
    return int(row[0]) if row else 0


def day_dir(settings: Settings, day: date) -> Path:
    return Path(settings.lake_uri) / RAW / f"day={day.isoformat()}"


def lake_files(settings: Settings) -> list[str]:
    root = Path(settings.lake_uri)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def lake_rows(spark: SparkSession, settings: Settings, day: date) -> int:
    return spark.read.parquet(str(day_dir(settings, day))).count()


def compact(spark: SparkSession, settings: Settings, run_id: str, **kwargs: Any) -> CompactionReport:
    return run_compaction(spark, settings, CompactionOptions(today=TODAY, run_id=run_id, **kwargs))


def by_day(report: CompactionReport) -> dict[str, Any]:
    return {p.day: p for p in report.partitions}


@pytest.fixture
def migrated(settings: Settings) -> Settings:
    apply_migrations(settings.pg_url)
    return settings


def test_old_days_are_archived_verified_and_dropped_and_a_rerun_is_a_no_op(
    spark: SparkSession, migrated: Settings
) -> None:
    settings = migrated
    seed_day(settings.pg_url, OLD_A, 250, duplicates=4)
    seed_day(settings.pg_url, OLD_B, 120, first_offset=10_000)
    seed_day(settings.pg_url, OLDEST_HOT, 10, first_offset=20_000)
    seed_day(settings.pg_url, RECENT, 5, first_offset=30_000)
    with pg_connect(settings.pg_url) as conn:
        spec = checksum_spec(conn, partition_name(OLD_A))
        checksum_a = pg_checksum(conn, partition_name(OLD_A), spec)
    assert (checksum_a["rows"], checksum_a["distinct_keys"]) == (254, 250)

    report = compact(spark, settings, "test-first", rows_per_file=100)

    assert report.state == "succeeded", report.errors
    results = by_day(report)
    assert sorted(results) == [OLD_A.isoformat(), OLD_B.isoformat()]
    for day, rows in ((OLD_A, 254), (OLD_B, 120)):
        result = results[day.isoformat()]
        assert (result.action, result.verification) == ("archived", "passed")
        assert (result.rows_before, result.rows_after, result.lake_rows, result.rows_exported) == (rows, 0, rows, rows)
        assert result.mismatches == {} and result.bytes_reclaimed > 0 and result.bytes_written > 0
        assert lake_rows(spark, settings, day) == rows  # the Parquet files hold every dropped row
        assert not partition_exists(settings.pg_url, day)
    assert results[OLD_A.isoformat()].duplicates == 4
    assert results[OLD_A.isoformat()].files_written == 3  # 254 rows, 100 per file
    assert results[OLD_A.isoformat()].checksum == checksum_a
    # The lake's copy checksums like the partition did (same aggregates, computed by Spark).
    from spark_jobs.batch.compact import spark_checksum

    assert spark_checksum(spark.read.parquet(str(day_dir(settings, OLD_A))).drop("batch"), spec) == checksum_a

    for day, rows in ((OLDEST_HOT, 10), (RECENT, 5)):
        assert partition_rows(settings.pg_url, day) == rows
    assert not (Path(settings.lake_uri) / RAW / "_staging").exists() or not any(
        p.is_file() and not p.name.startswith(".") for p in (Path(settings.lake_uri) / RAW / "_staging").rglob("*")
    )
    assert report.vacuumed == [RAW]

    # Stored: the row, the JSON and the standalone HTML.
    with pg_connect(settings.pg_url) as conn:
        stored = load_report(conn, report.id or 0)
        listed = list_reports(conn)
    assert stored is not None and stored.state == "succeeded" and len(stored.partitions) == 2
    assert [r.id for r in listed] == [report.id]
    html = Path(settings.state_dir / "reports" / "compaction" / f"{report.id:06d}" / "report.html")
    assert html.is_file() and "chart-rows" in html.read_text()

    files_before = lake_files(settings)
    rerun = compact(spark, settings, "test-rerun")
    assert rerun.state == "succeeded" and rerun.partitions == [] and rerun.vacuumed == []
    assert lake_files(settings) == files_before
    assert partition_rows(settings.pg_url, OLDEST_HOT) == 10


def test_an_export_that_outlived_its_partition_is_reverified_and_late_rows_become_a_batch(
    spark: SparkSession, migrated: Settings
) -> None:
    settings = migrated
    seed_day(settings.pg_url, OLD_A, 80)
    with pg_connect(settings.pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE saved_day AS SELECT * FROM {partition_name(OLD_A)}")
    first = compact(spark, settings, "test-export")
    assert by_day(first)[OLD_A.isoformat()].action == "archived"
    files = lake_files(settings)

    # The driver died between commit and drop: the same rows are still in PostgreSQL.
    with pg_connect(settings.pg_url, autocommit=True) as conn:
        conn.execute("SELECT ensure_day_partition(%s, %s)", (RAW, OLD_A))
        conn.execute(f"INSERT INTO {RAW} SELECT * FROM saved_day")
    again = by_day(compact(spark, settings, "test-reverify"))[OLD_A.isoformat()]
    assert (again.action, again.verification, again.reused_export) == ("archived", "passed", True)
    assert (again.files_written, again.rows_exported, again.lake_rows) == (0, 0, 80)
    assert lake_files(settings) == files and not partition_exists(settings.pg_url, OLD_A)

    # A late writer re-created the archived day with 3 new rows: only those are exported.
    seed_day(settings.pg_url, OLD_A, 3, first_offset=5_000)
    late = by_day(compact(spark, settings, "test-late"))[OLD_A.isoformat()]
    assert (late.action, late.verification, late.reused_export) == ("archived", "passed", False)
    assert (late.rows_before, late.rows_exported, late.lake_rows) == (3, 3, 83)
    assert lake_rows(spark, settings, OLD_A) == 83
    assert len(list(day_dir(settings, OLD_A).glob("batch=*"))) == 2


def delete_one_parquet_file(staging: str) -> None:
    """The simulated corruption: a Parquet file of the export disappears before verification."""
    parts = sorted(Path(staging).glob("part-*.parquet"))
    assert parts, f"no Parquet files in {staging}"
    parts[0].unlink()


def test_a_failed_verification_keeps_the_partition_and_fails_the_run(spark: SparkSession, migrated: Settings) -> None:
    settings = migrated
    seed_day(settings.pg_url, OLD_A, 300)
    seed_day(settings.pg_url, OLD_B, 40, first_offset=10_000)
    corrupt_first: list[str] = []

    def corrupt_old_a(staging: str) -> None:
        if f"day={OLD_A.isoformat()}" in staging:
            corrupt_first.append(staging)
            delete_one_parquet_file(staging)

    report = compact(spark, settings, "test-corrupt", rows_per_file=100, after_export=corrupt_old_a)

    assert corrupt_first, "the hook never saw OLD_A's export"
    assert report.state == "failed" and report.verification_failed
    failed, other = by_day(report)[OLD_A.isoformat()], by_day(report)[OLD_B.isoformat()]
    assert (failed.action, failed.verification, failed.rows_before, failed.rows_after) == ("kept", "failed", 300, 300)
    expected_rows, found_rows = failed.mismatches["rows"]
    assert expected_rows == 300 and found_rows is not None and 0 < found_rows < 300 and failed.error
    assert partition_rows(settings.pg_url, OLD_A) == 300  # the data is still there
    assert not day_dir(settings, OLD_A).exists()  # nothing committed for that day
    assert not Path(corrupt_first[0]).exists()  # the bad staging export is gone
    assert (other.action, other.verification) == ("archived", "passed")  # other days go on
    with pg_connect(settings.pg_url) as conn:
        stored = latest_report_for_run(conn, "test-corrupt")
    assert stored is not None and stored.state == "failed"
    assert "1 verification failure(s)" in stored.summary()

    # Once the lake behaves, the next run archives the kept day.
    retry = by_day(compact(spark, settings, "test-corrupt-retry"))[OLD_A.isoformat()]
    assert (retry.action, retry.lake_rows) == ("archived", 300)
    assert lake_rows(spark, settings, OLD_A) == 300


def test_writers_to_the_day_wait_while_it_is_exported(spark: SparkSession, migrated: Settings) -> None:
    settings = migrated
    seed_day(settings.pg_url, OLD_A, 20)
    blocked: list[str] = []

    def write_meanwhile(staging: str) -> None:
        with pg_connect(settings.pg_url, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '300ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable):
                conn.execute(
                    f"INSERT INTO {RAW} (topic, kafka_partition, kafka_offset, event_ts, user_id, product_id, action) "
                    "VALUES ('user_events', 0, 999999, %s, 1, 1, 'view')",
                    (datetime.combine(OLD_A, datetime.min.time(), tzinfo=UTC) + timedelta(hours=1),),
                )
            # Readers are not held up.
            row = conn.execute(f"SELECT count(*) FROM {partition_name(OLD_A)}").fetchone()
            blocked.append(f"{row[0] if row else None} rows readable")

    result = by_day(compact(spark, settings, "test-locked", after_export=write_meanwhile))[OLD_A.isoformat()]
    assert blocked == ["20 rows readable"]
    assert (result.action, result.lake_rows) == ("archived", 20)


def test_an_empty_day_is_archived_too(spark: SparkSession, migrated: Settings) -> None:
    settings = migrated
    seed_day(settings.pg_url, OLD_A, 0)
    result = by_day(compact(spark, settings, "test-empty"))[OLD_A.isoformat()]
    assert (result.action, result.verification, result.rows_before, result.lake_rows) == ("archived", "passed", 0, 0)
    assert not partition_exists(settings.pg_url, OLD_A)


def test_dry_run_changes_nothing(spark: SparkSession, migrated: Settings) -> None:
    settings = migrated
    seed_day(settings.pg_url, OLD_A, 30)
    report = compact(spark, settings, "test-dry", dry_run=True)
    result = by_day(report)[OLD_A.isoformat()]
    assert (report.state, result.action, result.verification, result.rows_before) == (
        "succeeded",
        "would_archive",
        "skipped",
        30,
    )
    assert partition_rows(settings.pg_url, OLD_A) == 30 and lake_files(settings) == []
    assert report.summary().startswith("compaction (dry run) succeeded: would archive 1 partition(s) (30 rows")


def create_indices(settings: Settings, names: list[str]) -> None:
    es = es_client(settings)
    for name in names:
        es.options(ignore_status=400).indices.create(index=name)


def test_expired_indices_and_published_outbox_rows_are_removed(spark: SparkSession, migrated: Settings) -> None:
    settings = migrated
    events, anomalies = USER_EVENTS.indices["events"], USER_EVENTS.indices["anomalies"]
    expired = [
        events.index_for(TODAY - timedelta(days=events.retention_days + 1)),
        anomalies.index_for(TODAY - timedelta(days=anomalies.retention_days + 5)),
    ]
    kept = [
        events.index_for(TODAY - timedelta(days=events.retention_days)),
        events.index_for(TODAY),
        f"{events.base}-not-a-day",
    ]
    create_indices(settings, expired + kept)
    now = datetime.now(UTC)
    old = now - timedelta(days=PLATFORM.outbox_retention_days + 1)
    with pg_connect(settings.pg_url, autocommit=True) as conn:
        for key, created, published in (
            ("old-published", old, old),
            ("old-unpublished", old, None),
            ("recent-published", now, now),
        ):
            conn.execute(
                f"""INSERT INTO {PLATFORM.outbox_table} (dedup_key, topic, message_key, payload, created_at, published_at)
                    VALUES (%s, 'anomaly_alerts', 'k', '{{}}', %s, %s)""",
                (key, created, published),
            )

    dry = compact(spark, settings, "test-expire-dry", dry_run=True)
    assert {i["index"] for i in dry.indices} >= set(expired) and dry.outbox and dry.outbox["rows"] == 1
    report = compact(spark, settings, "test-expire")

    assert report.state == "succeeded", report.errors
    assert {i["index"] for i in report.indices} >= set(expired)
    assert not {i["index"] for i in report.indices} & set(kept)
    remaining = set(es_client(settings).indices.get(index="tributary-*").body)
    assert not remaining & set(expired) and set(kept) <= remaining
    assert report.outbox is not None and report.outbox["rows"] == 1 and report.outbox["deleted"]
    with pg_connect(settings.pg_url) as conn:
        keys = {r[0] for r in conn.execute(f"SELECT dedup_key FROM {PLATFORM.outbox_table}").fetchall()}
    assert keys == {"old-unpublished", "recent-published"}
    assert PLATFORM.outbox_table in report.vacuumed
