"""Compaction, the PostgreSQL and Elasticsearch side: what to archive or expire, checksums, drops.

The compaction job (`spark_jobs/batch/compact.py`) archives raw day partitions older than a
pipeline's hot retention (`Pipeline.batch.hot_retention_days`) to Parquet in the data lake and
drops them once the export is verified; it also deletes daily Elasticsearch indices past their
family's `retention_days` and published outbox rows past `PLATFORM.outbox_retention_days`.
This module holds everything of that which needs no Spark:

    with pg_connect(settings.pg_url) as conn:
        for part in partitions_to_compact(conn, today=date.today()):
            with PartitionGuard(settings.pg_url, part) as guard:   # writers to the day wait from here
                before = guard.checksum()                          # ... export and verify in Spark ...
                guard.drop(expected=before)                        # detach + drop, same transaction

**The checksum** of a set of rows is a dict of exact integer aggregates that PostgreSQL computes
over the partition and Spark over the Parquet files, and that do not depend on row order:
`rows`, `distinct_keys` (the source position: primary key without the partition column), and per
column the count of non-null values plus, by type, the sum of integers, the sum of timestamps in
epoch microseconds, the sum of dates in epoch days, the count of true booleans, or the sum of the
UTF-8 byte lengths of the text form (text, inet, uuid, json...). Why these: both engines compute
them exactly (integer and decimal arithmetic, no floating point, whose sums depend on the order),
without a hash function that would have to agree bit for bit across the two engines, and they
follow the column types, so a raw table added later gets a checksum without code. A lost,
duplicated or altered row changes at least one of them (short of changes that cancel out).
Floating-point and numeric columns only contribute their non-null counts.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import psycopg
from elasticsearch import Elasticsearch
from psycopg import sql

from tributary.catalog import PIPELINES, PLATFORM, Index, Pipeline
from tributary.clients import pg_connect
from tributary.settings import REPO_ROOT

log = logging.getLogger(__name__)

# Day partitions are named `<table>_YYYYMMDD` by `ensure_day_partition` (sql/migrations/0001).
_DAY_SUFFIX = re.compile(r"_(\d{8})$")
# Daily indices are named `<base>-YYYY.MM.DD` (`Index.index_for`).
_INDEX_DAY = re.compile(r"-(\d{4})\.(\d{2})\.(\d{2})$")

# How long the drop waits for its locks before giving up (the streaming writers hold the parent
# table's lock for one short transaction at a time); a timeout keeps the partition for next time.
LOCK_TIMEOUT = "60s"

# The driver script spark-submit runs (the DAG's `compact` task).
COMPACT_JOB = REPO_ROOT / "spark_jobs" / "batch" / "compact.py"

MetricKind = Literal["count", "sum", "epoch_micros", "epoch_days", "utf8_bytes", "bytes", "true_count"]
Checksum = dict[str, int]

# PostgreSQL type (format_type) -> the value aggregate of the checksum besides the non-null count.
_INTEGER_TYPES = {"smallint", "integer", "bigint"}
_TEXT_LIKE_TYPES = {"text", "inet", "cidr", "macaddr", "uuid", "json", "jsonb"}


def _value_kind(pg_type: str) -> MetricKind | None:
    if pg_type in _INTEGER_TYPES:
        return "sum"
    if pg_type == "timestamp with time zone":
        return "epoch_micros"
    if pg_type == "date":
        return "epoch_days"
    if pg_type == "boolean":
        return "true_count"
    if pg_type == "bytea":
        return "bytes"
    if pg_type in _TEXT_LIKE_TYPES or pg_type.startswith(("character varying", "character(")):
        return "utf8_bytes"
    # double precision, real, numeric: sums depend on the order of addition (or on the scale
    # Spark's JDBC reader gives an unconstrained numeric); `timestamp without time zone` goes
    # through the JVM's default zone on its way into Spark. Counted, not summed.
    return None


@dataclass(frozen=True)
class Metric:
    """One aggregate of a checksum, over one column (or none, for `rows` and `distinct_keys`)."""

    kind: MetricKind
    column: str

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.column}"


@dataclass(frozen=True)
class ChecksumSpec:
    """What the checksum of one raw table aggregates; derived from the table's catalog entry in PG.

    `identity` names a row (the primary key, partition column included), `position_key` the
    source position whose repeats count as duplicates (the primary key without `event_ts`).
    """

    columns: tuple[tuple[str, str], ...]  # (name, PostgreSQL type) in table order
    metrics: tuple[Metric, ...]
    identity: tuple[str, ...]
    position_key: tuple[str, ...]

    def pg_select(self, relation: str) -> sql.Composed:
        """`SELECT <every aggregate> FROM relation`, one row, columns in `self.names()` order."""
        parts = [sql.SQL("count(*)"), _pg_count_distinct(self.position_key)]
        parts += [_pg_metric(metric) for metric in self.metrics]
        return sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(parts), sql.Identifier(relation))

    def names(self) -> list[str]:
        return ["rows", "distinct_keys", *(m.name for m in self.metrics)]


def _pg_count_distinct(columns: tuple[str, ...]) -> sql.Composable:
    if not columns:
        return sql.SQL("count(*)")
    return sql.SQL("count(DISTINCT ({}))").format(sql.SQL(", ").join(map(sql.Identifier, columns)))


def _pg_metric(metric: Metric) -> sql.Composable:
    col = sql.Identifier(metric.column)
    templates = {
        "count": "count({c})",
        "sum": "sum({c}::numeric)",
        # extract(epoch) is an exact numeric since PostgreSQL 14: microseconds survive.
        "epoch_micros": "sum(extract(epoch FROM {c}) * 1000000)",
        "epoch_days": "sum(({c} - DATE '1970-01-01')::numeric)",
        "true_count": "count(*) FILTER (WHERE {c})",
        "bytes": "sum(octet_length({c})::numeric)",
        # format('%s') uses the type's output function, the text Spark's JDBC reader receives
        # (a cast to text would add the /32 of an inet); bytes of UTF-8 whatever the DB encoding.
        "utf8_bytes": "sum(octet_length(convert_to(format('%s', {c}), 'UTF8'))::numeric)",
    }
    return sql.SQL(templates[metric.kind]).format(c=col)


def normalize_checksum(names: Iterable[str], values: Iterable[Any]) -> Checksum:
    """Aggregates as plain ints (None, the sum over no rows, is 0), keyed by metric name."""
    result: Checksum = {}
    for name, value in zip(names, values, strict=True):
        if value is None:
            result[name] = 0
            continue
        as_int = int(value)
        if as_int != value:
            raise ValueError(f"checksum metric {name} is {value!r}, not an integer; the metric is not exact")
        result[name] = as_int
    return result


def checksum_mismatches(expected: Mapping[str, int], actual: Mapping[str, int]) -> dict[str, list[int | None]]:
    """Metric -> [expected, actual] for every metric that differs (missing ones included)."""
    # In the checksum's own order (rows first), so the telling differences come first.
    names = [*expected, *(n for n in actual if n not in expected)]
    return {name: [expected.get(name), actual.get(name)] for name in names if expected.get(name) != actual.get(name)}


def checksum_spec(conn: psycopg.Connection[Any], table: str) -> ChecksumSpec:
    """The checksum of `table` (a raw table or one of its partitions) from its columns and key."""
    rows = conn.execute(
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod)
           FROM pg_attribute a
           WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
           ORDER BY a.attnum""",
        (table,),
    ).fetchall()
    if not rows:
        raise LookupError(f"table {table} has no columns or does not exist; run `tributary migrate`")
    key = conn.execute(
        """SELECT a.attname
           FROM pg_index i
           CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, position)
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
           WHERE i.indrelid = %s::regclass AND i.indisprimary
           ORDER BY k.position""",
        (table,),
    ).fetchall()
    columns = tuple((str(name), str(pg_type)) for name, pg_type in rows)
    primary_key = tuple(str(r[0]) for r in key)
    metrics: list[Metric] = []
    for name, pg_type in columns:
        metrics.append(Metric("count", name))
        kind = _value_kind(pg_type)
        if kind is not None:
            metrics.append(Metric(kind, name))
    return ChecksumSpec(
        columns=columns,
        metrics=tuple(metrics),
        # Without a primary key a row is all its columns, and duplicates are not counted (the
        # two engines disagree on DISTINCT over NULLs).
        identity=primary_key or tuple(name for name, _ in columns),
        position_key=tuple(c for c in primary_key if c != "event_ts"),
    )


def pg_checksum(conn: psycopg.Connection[Any], relation: str, spec: ChecksumSpec) -> Checksum:
    """The checksum of every row of `relation`, computed by PostgreSQL in one scan."""
    row = conn.execute(spec.pg_select(relation)).fetchone()
    assert row is not None  # an aggregate without GROUP BY always returns one row
    return normalize_checksum(spec.names(), row)


# ---------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class RawPartition:
    """One day partition of a pipeline's raw table."""

    pipeline: str
    table: str
    name: str
    day: date

    @property
    def start(self) -> datetime:
        return datetime.combine(self.day, time(), tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=1)


def oldest_hot_day(today: date, hot_retention_days: int) -> date:
    """The oldest day still kept in PostgreSQL: days before it are archived.

    With a retention of 30 days, on 2026-03-31 the days 2026-03-01 .. 2026-03-31 stay hot.
    """
    if hot_retention_days < 1:
        raise ValueError(f"hot_retention_days is {hot_retention_days}; the catalog must keep at least today")
    return today - timedelta(days=hot_retention_days)


def existing_raw_tables(conn: psycopg.Connection[Any], pipelines: Iterable[Pipeline]) -> list[Pipeline]:
    """Pipelines whose raw table exists (a pipeline's migration may not have landed yet)."""
    found = []
    for pipeline in pipelines:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (pipeline.tables.raw,)).fetchone()
        if row and row[0]:
            found.append(pipeline)
    return found


def raw_partitions(conn: psycopg.Connection[Any], pipeline: Pipeline) -> list[RawPartition]:
    """Every day partition of `pipeline`'s raw table, oldest first (other children are ignored)."""
    rows = conn.execute(
        """SELECT c.relname
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = %s::regclass
           ORDER BY c.relname""",
        (pipeline.tables.raw,),
    ).fetchall()
    partitions = []
    for (name,) in rows:
        found = _DAY_SUFFIX.search(name)
        if not name.startswith(f"{pipeline.tables.raw}_") or found is None:
            log.warning("%s: partition %s is not named <table>_YYYYMMDD; compaction leaves it", pipeline.name, name)
            continue
        day = datetime.strptime(found.group(1), "%Y%m%d").date()
        partitions.append(RawPartition(pipeline.name, pipeline.tables.raw, name, day))
    return sorted(partitions, key=lambda p: p.day)


def partitions_to_compact(
    conn: psycopg.Connection[Any], today: date, pipelines: Iterable[Pipeline] | None = None
) -> list[RawPartition]:
    """Day partitions older than their pipeline's hot retention, per pipeline oldest first."""
    selected = []
    for pipeline in existing_raw_tables(conn, PIPELINES.values() if pipelines is None else pipelines):
        first_hot = oldest_hot_day(today, pipeline.batch.hot_retention_days)
        selected += [p for p in raw_partitions(conn, pipeline) if p.day < first_hot]
    return selected


# ---------------------------------------------------------------------------------- drop


class PartitionChangedError(RuntimeError):
    """The partition's rows differ from the verified export; it is kept."""


class PartitionGuard:
    """A transaction that locks one partition from its checksum to its drop.

    SHARE ROW EXCLUSIVE lets readers (Spark's JDBC export) in and keeps writers out, so the rows
    that are checksummed, exported and verified are exactly the rows that are dropped; it also
    conflicts with itself, so a second compaction run waits instead of exporting the day twice
    (and then fails on that partition: it is gone). A late writer to
    that day waits; once the partition is gone its insert fails and the streaming job's retry
    re-creates the day (`ensure_day_partition`), which the next compaction archives as a new batch.
    Leaving the block without `drop()` rolls back: the partition stays as it was.
    """

    def __init__(self, pg_url: str, partition: RawPartition, *, lock_timeout: str = LOCK_TIMEOUT) -> None:
        self.pg_url = pg_url
        self.partition = partition
        self.lock_timeout = lock_timeout
        self._conn: psycopg.Connection[Any] | None = None
        self._spec: ChecksumSpec | None = None
        self.dropped = False

    def __enter__(self) -> PartitionGuard:
        conn = pg_connect(self.pg_url, application_name="tributary-compaction")
        try:
            conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(self.lock_timeout)))
            conn.execute(
                sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(sql.Identifier(self.partition.name))
            )
        except psycopg.errors.LockNotAvailable as exc:
            conn.close()
            raise RuntimeError(
                f"{self.partition.name}: could not lock it within {self.lock_timeout} (a long transaction "
                "writes to it?); it is kept, the next compaction run tries again"
            ) from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if self.dropped and exc_type is None:
                conn.commit()
            else:
                conn.rollback()
                self.dropped = False
        finally:
            conn.close()

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None:
            raise RuntimeError("PartitionGuard is not entered; use it in a `with` block")
        return self._conn

    def spec(self) -> ChecksumSpec:
        if self._spec is None:
            self._spec = checksum_spec(self.conn, self.partition.name)
        return self._spec

    def checksum(self) -> Checksum:
        """The checksum of the partition's rows (stable while the guard is held)."""
        return pg_checksum(self.conn, self.partition.name, self.spec())

    def size_bytes(self) -> int:
        """Disk space of the partition: table, TOAST and indexes (what the drop gives back)."""
        row = self.conn.execute("SELECT pg_total_relation_size(%s::regclass)", (self.partition.name,)).fetchone()
        return int(row[0]) if row else 0

    def drop(self, expected: Checksum) -> None:
        """Detach and drop the partition, committed when the guard exits cleanly.

        `expected` is the checksum the export was verified against; it is compared once more under
        the lock (cheap insurance against a guard misused across a commit).
        """
        actual = self.checksum()
        if actual != expected:
            raise PartitionChangedError(
                f"{self.partition.name} changed since its export was verified "
                f"({checksum_mismatches(expected, actual)}); kept, the next run exports it again"
            )
        part, parent = sql.Identifier(self.partition.name), sql.Identifier(self.partition.table)
        try:
            # DETACH needs the parent's ACCESS EXCLUSIVE lock for an instant; writers queue behind it.
            self.conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent, part))
            self.conn.execute(sql.SQL("DROP TABLE {}").format(part))
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as exc:
            raise RuntimeError(
                f"{self.partition.name}: could not detach it from {self.partition.table} ({exc.diag.message_primary}); "
                "the export is committed and the partition kept: the next compaction run re-verifies and drops it"
            ) from exc
        self.dropped = True


def vacuum_analyze(pg_url: str, tables: Iterable[str]) -> list[str]:
    """`VACUUM (ANALYZE)` each table (outside a transaction, as VACUUM must run); returns them."""
    done = []
    with pg_connect(pg_url, autocommit=True, application_name="tributary-compaction") as conn:
        for table in dict.fromkeys(tables):
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))
            done.append(table)
    return done


# ---------------------------------------------------------------------------------- outbox


@dataclass(frozen=True)
class OutboxCleanup:
    """Published outbox rows older than the retention: how many were (or, dry, would be) deleted."""

    cutoff: datetime
    retention_days: int
    rows: int
    deleted: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "cutoff": self.cutoff.isoformat(),
            "retention_days": self.retention_days,
            "rows": self.rows,
            "deleted": self.deleted,
        }


def expire_outbox(
    conn: psycopg.Connection[Any],
    now: datetime,
    *,
    retention_days: int = PLATFORM.outbox_retention_days,
    dry_run: bool = False,
) -> OutboxCleanup:
    """Delete published outbox rows older than `retention_days` (unpublished ones always stay)."""
    cutoff = now - timedelta(days=retention_days)
    table = sql.Identifier(PLATFORM.outbox_table)
    where = sql.SQL("published_at IS NOT NULL AND published_at < %s")
    if dry_run:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(table, where), (cutoff,)).fetchone()
        return OutboxCleanup(cutoff, retention_days, int(row[0]) if row else 0, deleted=False)
    cursor = conn.execute(sql.SQL("DELETE FROM {} WHERE {}").format(table, where), (cutoff,))
    return OutboxCleanup(cutoff, retention_days, cursor.rowcount, deleted=True)


# ---------------------------------------------------------------------------------- Elasticsearch


@dataclass(frozen=True)
class ExpiredIndex:
    """A daily index older than its family's retention."""

    index: str
    family: str
    day: date
    retention_days: int
    docs: int
    size_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "family": self.family,
            "day": self.day.isoformat(),
            "retention_days": self.retention_days,
            "docs": self.docs,
            "size_bytes": self.size_bytes,
        }


def index_day(index: Index, name: str) -> date | None:
    """The day of a daily index `<base>-YYYY.MM.DD` of this family, None for any other name."""
    if not name.startswith(f"{index.base}-"):
        return None
    found = _INDEX_DAY.search(name)
    if found is None or len(name) != len(index.base) + len("-YYYY.MM.DD"):
        return None
    try:
        return date(int(found.group(1)), int(found.group(2)), int(found.group(3)))
    except ValueError:
        return None


def expired_indices(es: Elasticsearch, today: date, pipelines: Iterable[Pipeline] | None = None) -> list[ExpiredIndex]:
    """Daily indices of every catalog family whose day is older than the family's retention."""
    expired = []
    for pipeline in PIPELINES.values() if pipelines is None else pipelines:
        for family, index in pipeline.indices.items():
            oldest_kept = today - timedelta(days=index.retention_days)
            # format=json makes the body a list of objects (the client types it as text or list).
            rows: list[dict[str, Any]] = es.cat.indices(index=index.pattern, format="json", bytes="b").body  # type: ignore[assignment]
            for row in rows:
                name = str(row["index"])
                day = index_day(index, name)
                if day is None or day >= oldest_kept:
                    continue
                expired.append(
                    ExpiredIndex(
                        index=name,
                        family=f"{pipeline.name}.{family}",
                        day=day,
                        retention_days=index.retention_days,
                        docs=int(row.get("docs.count") or 0),
                        size_bytes=int(row.get("store.size") or 0),
                    )
                )
    return sorted(expired, key=lambda e: (e.family, e.day))


def delete_indices(es: Elasticsearch, indices: Iterable[ExpiredIndex]) -> list[str]:
    """Delete each index by its exact name (never a pattern); an index already gone is fine."""
    deleted = []
    for expired in indices:
        es.options(ignore_status=404).indices.delete(index=expired.index)
        log.info("deleted index %s (%s, %d docs, day %s)", expired.index, expired.family, expired.docs, expired.day)
        deleted.append(expired.index)
    return deleted


# ---------------------------------------------------------------------------------- submission


def compact_job_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variables spark-submit needs to run COMPACT_JOB with this installation's Python.

    `spark-submit` itself is found on PATH (Airflow's Spark provider accepts no path), so this
    interpreter's bin directory goes first; the driver and its Python workers run this
    interpreter and import the repository's packages.
    """
    env = os.environ if base is None else base
    bin_dir = str(Path(sys.executable).parent)
    return {
        "PATH": os.pathsep.join(filter(None, [bin_dir, env.get("PATH", "")])),
        "PYSPARK_PYTHON": env.get("PYSPARK_PYTHON") or sys.executable,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")])),
    }
