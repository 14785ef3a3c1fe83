"""The compaction job: archive old raw day partitions to Parquet in the lake, then drop them.

    spark-submit spark_jobs/batch/compact.py [--dry-run] [--run-id ID] [--today YYYY-MM-DD]
    python -m spark_jobs.batch.compact --help

For every pipeline whose raw table exists, each day partition older than the pipeline's hot
retention (`Pipeline.batch.hot_retention_days`) is, under a lock that keeps writers out and lets
readers in (`tributary.compaction.PartitionGuard`):

1. checksummed in PostgreSQL (see `tributary.compaction` for what the checksum is);
2. read over JDBC and written as Parquet to a staging directory of the lake;
3. verified: the same checksum computed by Spark over the written Parquet files must equal
   PostgreSQL's; on a mismatch the staging files are deleted, the partition is kept and the run
   fails;
4. committed by renaming the staging directory into place, then detached and dropped.

Lake layout (`settings.lake_uri`, a local path or any Hadoop-compatible URI):

    <lake>/<table>/day=YYYY-MM-DD/batch=<UTC time>-r<report id>/part-*.parquet (+ _SUCCESS)
    <lake>/<table>/_staging/...      (being written; hidden from readers by its leading '_')

A day usually has one batch. Reruns are idempotent: a day already archived has no partition left
and is not looked at again; a day whose export was committed but whose partition survived (the
driver died between commit and drop) is re-verified against the existing batches, nothing is
written again, and it is dropped; rows that arrived for an archived day later (the day's
partition re-created by a late writer) are exported as one more batch of only the rows the lake
lacks. Afterwards the raw tables are vacuumed and analysed, daily Elasticsearch indices past their
family's retention are deleted, and published outbox rows past `PLATFORM.outbox_retention_days`.

Everything the run did goes into a report (`tributary.compaction_report`): JSON and an HTML page
with charts under `<state_dir>/reports/compaction/<id>/`, and a row of `compaction_reports` that
the Airflow UI lists. The exit status is 1 when a verification failed or a step raised.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import psycopg
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_jobs.batch.raw_reader import FETCH_SIZE, time_predicates
from spark_jobs.session import build_session
from tributary.catalog import PLATFORM
from tributary.clients import es_client, jdbc_url, pg_connect
from tributary.compaction import (
    Checksum,
    ChecksumSpec,
    Metric,
    PartitionGuard,
    RawPartition,
    checksum_mismatches,
    checksum_spec,
    delete_indices,
    expire_outbox,
    expired_indices,
    normalize_checksum,
    partitions_to_compact,
    pg_checksum,
    vacuum_analyze,
)
from tributary.compaction_report import (
    CompactionReport,
    PartitionResult,
    insert_report,
    reports_dir,
    save_report_files,
    store_report,
)
from tributary.settings import Settings, load_settings

log = logging.getLogger("tributary.compaction")

# Rows per Parquet file: large enough for efficient scans, small enough to write in one task.
ROWS_PER_FILE = 1_000_000
STAGING_DIR = "_staging"
# Hadoop and Spark treat names starting with these as hidden (markers, checksums, staging).
_HIDDEN = ("_", ".")

# A test hook: called with the staging URI after the export is written and before it is verified.
AfterExport = Callable[[str], None]


@dataclass(frozen=True)
class CompactionOptions:
    """How one compaction run behaves."""

    today: date
    run_id: str
    dry_run: bool = False
    rows_per_file: int = ROWS_PER_FILE
    # Tests only (there is no command-line switch): e.g. delete a Parquet file to simulate a
    # corrupted export, which verification must catch.
    after_export: AfterExport | None = None


# ---------------------------------------------------------------------------------- lake files


class LakeFileSystem:
    """The few Hadoop FileSystem calls the export needs, on the lake's URI (local, hdfs, s3a...)."""

    def __init__(self, spark: SparkSession, root: str) -> None:
        jvm = spark.sparkContext._jvm
        assert jvm is not None  # a live SparkContext always has its gateway
        self._path_class = jvm.org.apache.hadoop.fs.Path
        self.root = root.rstrip("/")
        self.fs = self._path_class(self.root).getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())

    def _path(self, uri: str) -> Any:
        return self._path_class(uri)

    def exists(self, uri: str) -> bool:
        return bool(self.fs.exists(self._path(uri)))

    def children(self, uri: str) -> list[tuple[str, bool, int]]:
        """(name, is directory, size in bytes) of every entry of `uri`; [] when it does not exist."""
        if not self.exists(uri):
            return []
        return [
            (str(s.getPath().getName()), bool(s.isDirectory()), int(s.getLen()))
            for s in self.fs.listStatus(self._path(uri))
        ]

    def data_files(self, uri: str) -> list[tuple[str, int]]:
        """(name, size) of the data files of a Parquet directory (markers and checksums left out)."""
        return [(n, size) for n, is_dir, size in self.children(uri) if not is_dir and not n.startswith(_HIDDEN)]

    def rename(self, source: str, target: str) -> None:
        """Move `source` to `target` (which must not exist), creating target's parent directory."""
        target_path = self._path(target)
        self.fs.mkdirs(target_path.getParent())
        if self.fs.exists(target_path):
            raise FileExistsError(f"{target} exists already; the export would be merged into it, not committed")
        if not self.fs.rename(self._path(source), target_path):
            raise OSError(f"renaming {source} to {target} failed; check the lake's permissions and free space")

    def delete(self, uri: str) -> None:
        self.fs.delete(self._path(uri), True)


@dataclass(frozen=True)
class DayLocation:
    """Where one raw table's day lives in the lake."""

    root: str
    table: str
    day: date

    @property
    def day_dir(self) -> str:
        return f"{self.root}/{self.table}/day={self.day.isoformat()}"

    def batch_dir(self, batch: str) -> str:
        return f"{self.day_dir}/batch={batch}"

    def staging_dir(self, batch: str) -> str:
        return f"{self.root}/{self.table}/{STAGING_DIR}/day={self.day.isoformat()}/batch={batch}"


def committed_batches(lake: LakeFileSystem, location: DayLocation) -> list[str]:
    """URIs of the day's committed batches (a batch directory holding Spark's `_SUCCESS`)."""
    found = []
    for name, is_dir, _ in lake.children(location.day_dir):
        if is_dir and name.startswith("batch=") and lake.exists(f"{location.day_dir}/{name}/_SUCCESS"):
            found.append(f"{location.day_dir}/{name}")
    return sorted(found)


# ---------------------------------------------------------------------------------- checksums


def _spark_metric(metric: Metric) -> Column:
    col = F.col(metric.column)
    exact = "decimal(38,0)"
    if metric.kind == "count":
        return F.count(col)
    if metric.kind == "sum":
        return F.sum(col.cast(exact))
    if metric.kind == "epoch_micros":
        return F.sum(F.unix_micros(col).cast(exact))
    if metric.kind == "epoch_days":
        return F.sum(F.unix_date(col).cast(exact))
    if metric.kind == "true_count":
        return F.count_if(col)
    if metric.kind in ("bytes", "utf8_bytes"):
        # octet_length of a Spark string is its UTF-8 byte length, as convert_to(..., 'UTF8') in PG.
        return F.sum(F.octet_length(col).cast(exact))
    raise ValueError(f"checksum metric kind {metric.kind!r} has no Spark form")


def spark_checksum(df: DataFrame, spec: ChecksumSpec) -> Checksum:
    """The checksum of `df`'s rows, the same aggregates `pg_checksum` computes in PostgreSQL."""
    distinct = F.count_distinct(*[F.col(c) for c in spec.position_key]) if spec.position_key else F.count(F.lit(1))
    aggregates = [F.count(F.lit(1)), distinct, *(_spark_metric(m) for m in spec.metrics)]
    row = df.agg(*aggregates).collect()[0]
    return normalize_checksum(spec.names(), list(row))


# ---------------------------------------------------------------------------------- one partition


def read_partition(
    spark: SparkSession, settings: Settings, partition: RawPartition, rows: int, rows_per_file: int
) -> DataFrame:
    """The partition's rows over JDBC, in hour slices read in parallel, one Spark partition per file."""
    files = max(1, math.ceil(rows / rows_per_file))
    slices = min(24, max(4, files))
    url, properties = jdbc_url(settings.pg_url)
    df = spark.read.jdbc(
        url,
        partition.name,
        predicates=time_predicates("event_ts", partition.start, partition.end, hours_per_slice=math.ceil(24 / slices)),
        properties={**properties, "fetchsize": FETCH_SIZE},
    )
    return df.coalesce(files)


def _batch_id(report_id: int | None) -> str:
    suffix = f"r{report_id}" if report_id is not None else uuid.uuid4().hex[:8]
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{suffix}"


def compact_partition(
    spark: SparkSession,
    settings: Settings,
    lake: LakeFileSystem,
    partition: RawPartition,
    options: CompactionOptions,
    report_id: int | None,
) -> PartitionResult:
    """Export, verify, commit and drop one partition (or, dry, only measure it)."""
    started = time.monotonic()
    if options.dry_run:
        with pg_connect(settings.pg_url) as conn:
            spec = checksum_spec(conn, partition.name)
            checksum = pg_checksum(conn, partition.name, spec)
            row = conn.execute("SELECT pg_total_relation_size(%s::regclass)", (partition.name,)).fetchone()
        return PartitionResult(
            pipeline=partition.pipeline,
            table=partition.table,
            partition=partition.name,
            day=partition.day.isoformat(),
            action="would_archive",
            verification="skipped",
            rows_before=checksum["rows"],
            rows_after=checksum["rows"],
            duplicates=checksum["rows"] - checksum["distinct_keys"],
            bytes_reclaimed=int(row[0]) if row else 0,
            duration_s=time.monotonic() - started,
            checksum=checksum,
        )

    location = DayLocation(lake.root, partition.table, partition.day)
    with PartitionGuard(settings.pg_url, partition) as guard:
        spec = guard.spec()
        expected = guard.checksum()
        size = guard.size_bytes()
        rows = expected["rows"]
        result = PartitionResult(
            pipeline=partition.pipeline,
            table=partition.table,
            partition=partition.name,
            day=partition.day.isoformat(),
            action="kept",
            verification="failed",
            rows_before=rows,
            rows_after=rows,
            duplicates=rows - expected["distinct_keys"],
            checksum=expected,
        )
        source = read_partition(spark, settings, partition, rows, options.rows_per_file)
        identity = list(spec.identity)
        earlier = committed_batches(lake, location)
        earlier_rows = 0
        to_export = source
        if earlier:
            previous = spark.read.schema(source.schema).parquet(*earlier)
            earlier_rows = previous.count()
            # Only what the lake lacks: nothing after a crash between commit and drop, the late
            # rows when a writer re-created an archived day.
            to_export = source.join(previous.select(*identity), identity, "left_anti")
        batch = _batch_id(report_id)
        staging = location.staging_dir(batch)
        write = not earlier or not to_export.isEmpty()
        if write:
            to_export.write.mode("errorifexists").parquet(staging)
            files = lake.data_files(staging)
            result.files_written = len(files)
            result.bytes_written = sum(size for _, size in files)
            # From the Parquet footers, before anything (the test hook) touches the files.
            result.rows_exported = spark.read.schema(source.schema).parquet(staging).count()
            if options.after_export is not None:
                options.after_export(staging)
        else:
            result.reused_export = True

        exported = [*earlier, *([staging] if write else [])]
        lake_rows = spark.read.schema(source.schema).parquet(*exported)
        if earlier:
            # The lake may hold rows of this day that are no longer in the partition (archived
            # before it was re-created): verify only those the partition has.
            lake_rows = lake_rows.join(source.select(*identity), identity, "left_semi")
        actual = spark_checksum(lake_rows, spec)
        result.mismatches = checksum_mismatches(expected, actual)
        if result.mismatches:
            if write:
                lake.delete(staging)
            if earlier and not write:
                # Every source position is archived already, with other values: a human decides.
                result.error = (
                    f"{partition.name} holds the same source positions as the batches archived before "
                    f"({', '.join(earlier)}) but other values ({len(result.mismatches)} metric(s) differ); the "
                    "partition is kept: compare both, then delete the partition or the stale batch and rerun"
                )
            else:
                result.error = (
                    f"the export of {partition.name} does not match it ({len(result.mismatches)} metric(s) differ); "
                    "the partition is kept and the staging files deleted; look for lost writes in the lake "
                    "(storage errors, a concurrent cleanup), then rerun"
                )
            result.lake_rows = earlier_rows
            result.duration_s = time.monotonic() - started
            log.error("%s: verification failed: %s", partition.name, result.mismatches)
            return result

        result.verification = "passed"
        if write:
            lake.rename(staging, location.batch_dir(batch))
            result.export_uri = location.batch_dir(batch)
        result.lake_rows = earlier_rows + result.rows_exported
        guard.drop(expected)
        # Committed by the guard's exit: the transaction holds the lock until then.
    result.action = "archived"
    result.rows_after = 0
    result.bytes_reclaimed = size
    result.duration_s = time.monotonic() - started
    log.info(
        "%s: archived %d rows to %s (%d file(s), %d bytes), %d bytes reclaimed",
        partition.name,
        rows,
        result.export_uri or "existing batches",
        result.files_written,
        result.bytes_written,
        size,
    )
    return result


# ---------------------------------------------------------------------------------- the run


def run_compaction(spark: SparkSession, settings: Settings, options: CompactionOptions) -> CompactionReport:
    """One compaction run, start to finish; the report is stored whatever happens."""
    report = CompactionReport.start(
        run_id=options.run_id, dry_run=options.dry_run, today=options.today, lake_uri=settings.lake_uri
    )
    try:
        with pg_connect(settings.pg_url, autocommit=True, application_name="tributary-compaction") as conn:
            insert_report(conn, report)
    except psycopg.errors.UndefinedTable as exc:
        raise RuntimeError(
            f"cannot record the compaction report ({exc.diag.message_primary}); apply the migrations "
            "(`tributary migrate` or the tributary_bootstrap DAG), then rerun"
        ) from exc
    log.info(
        "compaction report #%s, run %s, today %s, dry run %s", report.id, report.run_id, report.today, report.dry_run
    )
    try:
        _step(report, "compact raw partitions", lambda: _compact_partitions(spark, settings, options, report))
        _step(report, "expire Elasticsearch indices", lambda: _expire_indices(settings, options, report))
        _step(report, "expire outbox rows", lambda: _expire_outbox(settings, options, report))
    except BaseException as exc:
        report.errors.append(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        report.finish()
        _store(settings, report)
    return report


def _step(report: CompactionReport, what: str, action: Callable[[], None]) -> None:
    """Run one independent step; its error is recorded (the run fails) and the next step runs."""
    try:
        action()
    except Exception as exc:
        log.exception("compaction: %s failed", what)
        report.errors.append(f"{what}: {type(exc).__name__}: {exc}")


def _compact_partitions(
    spark: SparkSession, settings: Settings, options: CompactionOptions, report: CompactionReport
) -> None:
    with pg_connect(settings.pg_url, application_name="tributary-compaction") as conn:
        plan = partitions_to_compact(conn, options.today)
    log.info("compaction: %d partition(s) past their hot retention: %s", len(plan), [p.name for p in plan])
    lake = LakeFileSystem(spark, settings.lake_uri)
    for partition in plan:
        try:
            result = compact_partition(spark, settings, lake, partition, options, report.id)
        except Exception as exc:
            log.exception("compaction: %s failed", partition.name)
            report.errors.append(f"{partition.name}: {type(exc).__name__}: {exc}")
            continue
        report.partitions.append(result)
    archived = [p.table for p in report.partitions if p.action == "archived"]
    if archived:
        _step(report, "vacuum raw tables", lambda: report.vacuumed.extend(vacuum_analyze(settings.pg_url, archived)))


def _expire_indices(settings: Settings, options: CompactionOptions, report: CompactionReport) -> None:
    es = es_client(settings)
    try:
        expired = expired_indices(es, options.today)
        if not options.dry_run:
            delete_indices(es, expired)
        report.indices = [e.to_json() for e in expired]
    finally:
        es.close()


def _expire_outbox(settings: Settings, options: CompactionOptions, report: CompactionReport) -> None:
    with pg_connect(settings.pg_url, application_name="tributary-compaction") as conn:
        cleanup = expire_outbox(conn, datetime.now(UTC), dry_run=options.dry_run)
    report.outbox = cleanup.to_json()
    if cleanup.deleted and cleanup.rows:
        report.vacuumed.extend(vacuum_analyze(settings.pg_url, [PLATFORM.outbox_table]))


def _store(settings: Settings, report: CompactionReport) -> None:
    json_path = html_path = None
    try:
        json_path, html_path = save_report_files(report, reports_dir(settings))
    except OSError as exc:
        # The table keeps the report either way; the files are a convenience copy.
        log.error("compaction report #%s: could not save its files under %s: %s", report.id, reports_dir(settings), exc)
    with pg_connect(settings.pg_url, autocommit=True, application_name="tributary-compaction") as conn:
        store_report(conn, report, json_path, html_path)
    log.info("compaction report #%s: %s (%s)", report.id, report.summary(), html_path)


# ---------------------------------------------------------------------------------- command line


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (true/false)")


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day (YYYY-MM-DD)") from None


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dry-run",
        nargs="?",
        const=True,
        default=False,
        type=_bool,
        help="measure and report only: no export, no drop, no deletion (`--dry-run` or `--dry-run=true|false`)",
    )
    parser.add_argument("--run-id", default=None, help="id of this run in the report (default: manual__<UTC time>)")
    parser.add_argument(
        "--today", type=_day, default=None, help="the day retention counts from (default: today in UTC)"
    )
    parser.add_argument(
        "--master", default=None, help="Spark master (default: TRIBUTARY_SPARK_MASTER unless spark-submit set one)"
    )
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one compaction; exit status 1 when a verification failed or a step raised."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    settings = load_settings()
    options = CompactionOptions(
        today=args.today or datetime.now(UTC).date(),
        run_id=args.run_id or f"manual__{datetime.now(UTC).isoformat(timespec='seconds')}",
        dry_run=args.dry_run,
    )
    # Under spark-submit the master comes from its command line; run directly, from the settings.
    master = args.master or (None if "PYSPARK_GATEWAY_PORT" in os.environ else settings.spark_master)
    spark = build_session(
        "tributary-compaction",
        master,
        # Parquet's standard timestamp type (INT96 is Spark's legacy default) for other readers.
        extra_conf={"spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS"},
    )
    try:
        report = run_compaction(spark, settings, options)
    finally:
        spark.stop()
    print(report.summary())
    if report.state != "succeeded":
        failed = [p.partition for p in report.partitions if p.verification == "failed"]
        if failed:
            print(f"compaction: verification failed for {', '.join(failed)}; kept in PostgreSQL", file=sys.stderr)
        for error in report.errors:
            print(f"compaction: {error}", file=sys.stderr)
        print(f"compaction: see report #{report.id} (Airflow UI > Compaction reports)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
