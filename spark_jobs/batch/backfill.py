"""Backfill: recompute what a pipeline derives from its raw table, for a time range, idempotently.

    python -m spark_jobs.batch.backfill --pipeline user_events \\
        --start 2026-11-23T00:00:00Z --end 2026-11-24T00:00:00Z \\
        --targets summaries,anomalies,es,alerts [--dry-run]
    python -m spark_jobs.batch.backfill --pipeline weather \\
        --start 2026-11-23T00:00:00Z --end 2026-11-24T00:00:00Z --targets summaries [--dry-run]
    spark-submit spark_jobs/batch/backfill.py ...       # how the tributary_backfill DAG runs it

The raw rows of the range are read over JDBC, one slice per hour (each slice prunes to one day
partition), and recomputed with the streaming job's own transformation and line-building
functions, so a backfill of a range the streaming job processed writes exactly what it wrote;
events the streaming job dropped as late (behind its watermark) are folded in.

Targets (any subset): `summaries` and `anomalies` are upserted by (user, window), and only rows
whose values differ are touched, so a rerun changes nothing; `es` creates missing documents under
the streaming job's deterministic ids (409: already there); `alerts` enqueues an outbox alert only
for anomalies that were not already recorded or alerted, then publishes it. A window is
recomputed when it overlaps the range; the events it needs beyond the range are read too.
`--dry-run` computes the same and reports per target what would be new or changed, writing
nothing but its record in `backfill_runs`.

weather (`summaries` only, whole UTC hours): the hourly summary rows per station and over all
stations are recomputed from every raw reading of the range, late ones included, and replace the
stored ones where they differ; the late readings summed in are marked folded (`folded_at`) in the
same transaction, after their window's rows. The report counts them as `late_readings` (changed:
folded by this run).

Progress goes to the log after every chunk of the range (`backfill user_events: read 120,000
rows (40% of 300,000) ...`) and, on a terminal, to a progress bar. The last line on stdout is a JSON
summary; the exit code is 0 on success, 1 when the backfill failed, 2 for invalid arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import re
import signal
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from types import FrameType
from typing import Any, ClassVar, TextIO

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from elasticsearch import TransportError as EsTransportError
from psycopg import sql
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_jobs.batch.raw_reader import hour_slices, read_raw_range
from spark_jobs.session import build_session, launched_by_spark_submit
from spark_jobs.sinks.copy_lines import copy_line, copy_payload, csv_line
from spark_jobs.sinks.elasticsearch import ElasticsearchSink
from spark_jobs.sinks.outbox import OutboxPublisher
from spark_jobs.sinks.postgres import PostgresSink, SinkError
from spark_jobs.user_events import transforms as T
from spark_jobs.user_events import writers as W
from spark_jobs.weather import transforms as WT
from tributary.catalog import PIPELINES, PLATFORM, Pipeline, PlatformNames, get_pipeline
from tributary.clients import es_client, jdbc_url, kafka_config, plain_pg_url
from tributary.settings import Settings, load_settings

log = logging.getLogger("tributary.backfill")

SUMMARIES, ANOMALIES, ES, ALERTS = "summaries", "anomalies", "es", "alerts"
TARGETS = (SUMMARIES, ANOMALIES, ES, ALERTS)
# ISO 8601 instants with an explicit offset (or a bare date: midnight UTC). The DAG's Params use
# it too: jsonschema only checks `format: date-time` when an optional package is installed.
INSTANT_PATTERN = r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:?\d{2}))?$"
RESULT_KEY = "backfill"
DEFAULT_ROWS_PER_CHUNK = 500_000
# Raw rows per JDBC slice: slices are whole hours, but sparse hours are read several at a time.
ROWS_PER_SLICE = 100_000
# Session settings while a backfill runs (same results, other physical plans). The windows'
# collect_set makes Spark pick an object hash aggregate, which falls back to sorting after 128
# keys; on window rows nearly every key is new, and a sort aggregate from the start is twice as
# fast (measured: 1-minute windows of 250k events, 10.8 s -> 5.5 s on local[2]).
BATCH_CONF = {"spark.sql.execution.useObjectHashAggregateExec": "false"}

_INSTANT = re.compile(INSTANT_PATTERN)


# ---------------------------------------------------------------------------------- request


def parse_instant(text: str, what: str = "instant") -> datetime:
    """An ISO 8601 instant with an offset (`2026-11-23T10:00:00Z`), or a date (its midnight UTC)."""
    value = str(text).strip()
    if not _INSTANT.match(value):
        raise ValueError(
            f"{what} {value!r} is not an ISO 8601 instant with a time zone; write e.g. 2026-11-23T10:00:00Z "
            "(or a date, 2026-11-23, for its midnight UTC)"
        )
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as error:  # matches the pattern, but no such day or time (2026-02-30)
        raise ValueError(
            f"{what} {value!r} is not a valid instant ({error}); write e.g. 2026-11-23T10:00:00Z"
        ) from None
    if parsed.tzinfo is None:  # a bare date
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def parse_targets(value: str | Iterable[str]) -> tuple[str, ...]:
    """Targets from `a,b` or a list, de-duplicated, in the order of TARGETS; unknown ones refused."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = {str(item).strip() for item in items if str(item).strip()}
    unknown = sorted(names - set(TARGETS))
    if unknown:
        raise ValueError(f"unknown backfill target(s) {unknown}; choose from {', '.join(TARGETS)}")
    if not names:
        raise ValueError(f"no backfill target given; choose one or more of {', '.join(TARGETS)}")
    return tuple(t for t in TARGETS if t in names)


def parse_bool(value: bool | str) -> bool:
    """A flag given as a bool or as text (templated DAG fields arrive as `True` / `false`)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"true", "1", "yes", "on"}:
        return True
    if text in {"false", "0", "no", "off", ""}:
        return False
    raise ValueError(f"{value!r} is not a boolean; use true or false")


@dataclass(frozen=True)
class BackfillRequest:
    """What to backfill: a pipeline, an event-time range [start, end), targets, dry run or not."""

    pipeline: str
    start: datetime
    end: datetime
    targets: tuple[str, ...]
    dry_run: bool = False
    requested_by: str | None = None

    @classmethod
    def parse(
        cls,
        pipeline: str,
        start: str | datetime,
        end: str | datetime,
        targets: str | Iterable[str],
        dry_run: bool | str = False,
        requested_by: str | None = None,
    ) -> BackfillRequest:
        """A request from user input (CLI arguments, DAG params); raises ValueError naming the fix."""
        name = str(pipeline).strip()
        if name not in PIPELINES:
            raise ValueError(f"unknown pipeline {name!r}; the catalog has {', '.join(sorted(PIPELINES))}")
        begin = start.astimezone(UTC) if isinstance(start, datetime) else parse_instant(start, "start")
        finish = end.astimezone(UTC) if isinstance(end, datetime) else parse_instant(end, "end")
        if finish <= begin:
            raise ValueError(f"empty range: end {finish.isoformat()} is not after start {begin.isoformat()}")
        return cls(name, begin, finish, parse_targets(targets), parse_bool(dry_run), requested_by)

    def check(self, pipeline: Pipeline, now: datetime) -> None:
        """Refuses what this pipeline cannot backfill now, saying what to change."""
        backfill = BACKFILLS.get(pipeline.name)
        if backfill is None:
            raise ValueError(
                f"pipeline {pipeline.name} has no backfill yet; pipelines with one: {', '.join(backfill_pipelines())}"
            )
        unsupported = [t for t in self.targets if t not in backfill.targets]
        if unsupported:
            raise ValueError(
                f"{pipeline.name} backfills {', '.join(backfill.targets)}, not {', '.join(unsupported)}; drop them"
            )
        backfill.check_range(pipeline, self.start, self.end)
        settle = timedelta(hours=pipeline.batch.reconcile_delay_hours)
        if self.end > now - settle:
            raise ValueError(
                f"end {self.end.isoformat()} is less than {settle} ago: the streaming job may still be writing "
                f"windows there (its lag and watermark); choose an end at or before {(now - settle).isoformat()} "
                f"(catalog batch.reconcile_delay_hours of {pipeline.name})"
            )
        oldest = now - timedelta(days=pipeline.batch.hot_retention_days)
        if self.start < oldest:
            raise ValueError(
                f"start {self.start.isoformat()} is older than {pipeline.batch.hot_retention_days} days: compaction "
                f"archives those raw days to the lake and drops them, so recomputing from the raw table would "
                f"miss events; choose a start at or after {oldest.isoformat()}"
            )

    def job_args(self) -> list[str]:
        """The command-line arguments of this module that make the same request."""
        args = ["--pipeline", self.pipeline, "--start", self.start.isoformat(), "--end", self.end.isoformat()]
        args += ["--targets", ",".join(self.targets)]
        if self.dry_run:
            args.append("--dry-run")
        if self.requested_by:
            args += ["--requested-by", self.requested_by]
        return args


# ------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Chunk:
    """One Spark job's share of the range: its raw rows are [lo, hi), its windows start in [window_lo, hi)."""

    number: int
    lo: datetime
    hi: datetime
    rows: int
    window_lo: datetime

    def read_range(self, margin: timedelta) -> tuple[datetime, datetime]:
        """Events every window of this chunk needs: up to `margin` (the longest window) past `hi`."""
        return self.window_lo, self.hi + margin

    def hours_per_slice(self) -> int:
        """JDBC slice width: one hour, or several where hours are sparse (fewer, fuller tasks)."""
        hours = max(1, math.ceil((self.hi - self.window_lo) / timedelta(hours=1)))
        slices = min(hours, max(1, math.ceil(self.rows / ROWS_PER_SLICE)))
        return max(1, math.ceil(hours / slices))


def plan_chunks(
    start: datetime, end: datetime, hour_rows: Mapping[datetime, int], rows_per_chunk: int, margin: timedelta
) -> list[Chunk]:
    """[start, end) cut at whole hours into chunks of about `rows_per_chunk` raw rows.

    `hour_rows` maps the start of each UTC hour to its raw row count (missing: none). The first
    chunk also owns the windows that start up to `margin` before `start` (they overlap the range).
    """
    if rows_per_chunk < 1:
        raise ValueError(f"rows_per_chunk must be positive, not {rows_per_chunk}")
    chunks: list[Chunk] = []
    lo, rows = start, 0
    for low, high in hour_slices(start, end):
        rows += hour_rows.get(low.replace(minute=0, second=0, microsecond=0), 0)
        if rows >= rows_per_chunk or high == end:
            window_lo = lo - margin if not chunks else lo
            chunks.append(Chunk(len(chunks) + 1, lo, high, rows, window_lo))
            lo, rows = high, 0
    return chunks


# ----------------------------------------------------------------------------------- report


@dataclass
class TargetCounts:
    """Rows (documents) recomputed for one target: new, changed, and unchanged (already there)."""

    new: int = 0
    changed: int = 0
    unchanged: int = 0

    @property
    def written(self) -> int:
        return self.new + self.changed

    def add(self, other: TargetCounts) -> None:
        self.new += other.new
        self.changed += other.changed
        self.unchanged += other.unchanged


@dataclass
class BackfillReport:
    """What a backfill did (or, in a dry run, would do), per target."""

    request: BackfillRequest
    run_id: int | None = None
    state: str = "running"
    rows_planned: int = 0
    rows_read: int = 0
    chunks: int = 0
    targets: dict[str, TargetCounts] = field(default_factory=dict)
    published: int = 0
    seconds: float = 0.0
    error: str | None = None

    def __post_init__(self) -> None:
        for target in self.request.targets:
            self.targets.setdefault(target, TargetCounts())

    @property
    def written(self) -> int:
        return sum(c.written for c in self.targets.values())

    def percent(self) -> float:
        return 100.0 if not self.rows_planned else 100.0 * self.rows_read / self.rows_planned

    def summary(self) -> dict[str, Any]:
        """The JSON-able summary printed as the job's last line and stored in `backfill_runs`."""
        return {
            RESULT_KEY: self.request.pipeline,
            "run_id": self.run_id,
            "state": self.state,
            "start": self.request.start.isoformat(),
            "end": self.request.end.isoformat(),
            "targets": {name: asdict(counts) for name, counts in self.targets.items()},
            "dry_run": self.request.dry_run,
            "rows_planned": self.rows_planned,
            "rows_read": self.rows_read,
            "chunks": self.chunks,
            "written": self.written,
            "published": self.published,
            "seconds": round(self.seconds, 3),
            "rows_per_s": round(self.rows_read / self.seconds) if self.seconds else None,
            "error": self.error,
        }

    def progress_line(self) -> str:
        verb = "would write" if self.request.dry_run else "written"
        parts = [
            f"{name} {c.written:,} ({c.new:,} new, {c.changed:,} changed, {c.unchanged:,} unchanged)"
            for name, c in self.targets.items()
        ]
        return (
            f"backfill {self.request.pipeline}: read {self.rows_read:,} rows ({self.percent():.0f}% of "
            f"{self.rows_planned:,}); {verb}: {'; '.join(parts)}"
        )


class BackfillInterrupted(Exception):
    """The backfill was asked to stop (SIGTERM, e.g. its Airflow task was stopped)."""


# The signal that stopped this process, if one did: raised inside a call into the JVM, the
# interruption reaches the backfill as whatever error that call then reports.
_STOPPED_BY: list[int] = []


class BackfillError(RuntimeError):
    """A backfill failed; carries the report of what it did before it failed."""

    def __init__(self, message: str, report: BackfillReport) -> None:
        super().__init__(message)
        self.report = report


# ----------------------------------------------------------------------------------- writes

# One row per (task, target) from the executors.
RESULT_SCHEMA = pa.schema(
    [("target", pa.string()), ("new", pa.int64()), ("changed", pa.int64()), ("unchanged", pa.int64())]
)
RESULT_DDL = "target string, new long, changed long, unchanged long"
KIND, LINE = "kind", "line"


class WriteTarget(ABC):
    """Where the lines of one kind go, and how a dry run counts what would change."""

    kind: str
    target: str

    @abstractmethod
    def write(self, cur: psycopg.Cursor[Any], lines: pa.ChunkedArray, dry_run: bool, fresh: bool) -> TargetCounts:
        """Stage `lines` (COPY CSV) and merge them (or, in a dry run, only count).

        `fresh`: the driver found no rows of this target in the chunk's time range, so every
        line is new and may be copied straight into the table.
        """

    def empty_between(self, conn: psycopg.Connection[Any], low: datetime, high: datetime) -> bool:
        """True when the target holds no rows in [low, high) (False: unknown, merge as usual)."""
        return False


def _stage(cur: psycopg.Cursor[Any], stage: str, columns: Sequence[str], lines: pa.ChunkedArray) -> None:
    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(sql.Identifier(stage), cols)) as copy:
        for chunk in copy_payload(lines):
            copy.write(chunk)


@dataclass(frozen=True)
class UpsertTarget(WriteTarget):
    """A table upserted by key where the recomputed values differ (a rerun touches nothing)."""

    kind: str
    target: str
    table: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    # The column that places a row in time (a window's start), for `empty_between`.
    time_column: str
    # Float columns that may come out a few ulps apart when recomputed (sums added in another
    # order): a row counts as changed only when one of them differs by more than `rel_tolerance`
    # of its magnitude (at least 1), or another column differs at all.
    approx: tuple[str, ...] = ()
    rel_tolerance: float = 1e-9
    # A column set to now() when a row is updated (None: none).
    stamp_column: str | None = None

    def differs(self, left: str, right: str) -> sql.Composable:
        """SQL true when the value columns of the rows aliased `left` and `right` differ."""
        values = [c for c in self.columns if c not in self.key]

        def row(alias: str, columns: Sequence[str]) -> sql.Composable:
            return sql.SQL(", ").join(
                sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(c)) for c in columns
            )

        exact = [c for c in values if c not in self.approx]
        tests: list[sql.Composable] = []
        if exact:
            tests.append(sql.SQL("({}) IS DISTINCT FROM ({})").format(row(left, exact), row(right, exact)))
        for column in (c for c in values if c in self.approx):
            a = sql.SQL("{}.{}").format(sql.Identifier(left), sql.Identifier(column))
            b = sql.SQL("{}.{}").format(sql.Identifier(right), sql.Identifier(column))
            tests.append(
                sql.SQL(
                    "coalesce(abs({a} - {b}) > {tol} * greatest(abs({a}), abs({b}), 1), ({a} IS NULL) <> ({b} IS NULL))"
                ).format(a=a, b=b, tol=sql.Literal(self.rel_tolerance))
            )
        return sql.SQL("({})").format(sql.SQL(" OR ").join(tests))

    def empty_between(self, conn: psycopg.Connection[Any], low: datetime, high: datetime) -> bool:
        query = sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {} WHERE {col} >= %s AND {col} < %s)").format(
            sql.Identifier(self.table), col=sql.Identifier(self.time_column)
        )
        row = conn.execute(query, (low, high)).fetchone()
        return bool(row and row[0])

    def write(self, cur: psycopg.Cursor[Any], lines: pa.ChunkedArray, dry_run: bool, fresh: bool) -> TargetCounts:
        if fresh:
            if dry_run:
                return TargetCounts(new=len(lines))
            try:
                # Straight into the table (about twice as fast as staging and merging), in a
                # savepoint: should a row have appeared since the driver looked, the conflict
                # undoes only this copy, and the merge below does it properly.
                with cur.connection.transaction():
                    _stage(cur, self.table, self.columns, lines)
                return TargetCounts(new=len(lines))
            except psycopg.errors.UniqueViolation:
                pass
        stage = f"_backfill_{self.table}"
        cur.execute(
            sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS").format(
                sql.Identifier(stage), sql.Identifier(self.table)
            )
        )
        _stage(cur, stage, self.columns, lines)
        values = [c for c in self.columns if c not in self.key]
        target, staged = sql.Identifier(self.table), sql.Identifier(stage)
        if dry_run:
            query = sql.SQL(
                "SELECT count(*) FILTER (WHERE t.{first} IS NULL), "
                "count(*) FILTER (WHERE t.{first} IS NOT NULL AND {differs}), count(*) "
                "FROM {staged} s LEFT JOIN {target} t ON {join}"
            ).format(
                first=sql.Identifier(self.key[0]),
                differs=self.differs("s", "t"),
                staged=staged,
                target=target,
                join=sql.SQL(" AND ").join(sql.SQL("t.{0} = s.{0}").format(sql.Identifier(k)) for k in self.key),
            )
        else:
            cols = sql.SQL(", ").join(map(sql.Identifier, self.columns))
            updates = [sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in values]
            if self.stamp_column is not None:
                updates.append(sql.SQL("{} = now()").format(sql.Identifier(self.stamp_column)))
            query = sql.SQL(
                "WITH merged AS (INSERT INTO {target} AS t ({cols}) SELECT {cols} FROM {staged} "
                "ON CONFLICT ({key}) DO UPDATE SET {updates} WHERE {differs} "
                # xmax is 0 on a freshly inserted row version, the updating transaction's id otherwise.
                "RETURNING (t.xmax = 0) AS inserted) "
                "SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted), "
                "(SELECT count(*) FROM {staged}) FROM merged"
            ).format(
                target=target,
                cols=cols,
                staged=staged,
                key=sql.SQL(", ").join(map(sql.Identifier, self.key)),
                updates=sql.SQL(", ").join(updates),
                differs=self.differs("t", "excluded"),
            )
        cur.execute(query)
        found = cur.fetchone()
        assert found is not None
        new, changed, total = (int(v) for v in found)
        return TargetCounts(new=new, changed=changed, unchanged=total - new - changed)


@dataclass(frozen=True)
class AlertTarget(WriteTarget):
    """Outbox alerts, each only if its anomaly was not recorded before and its key is not queued.

    An anomaly already in `guard_table` was alerted when it was recorded (the streaming job
    writes both in one transaction), even if compaction has since removed its outbox row; the
    outbox's unique `dedup_key` covers alerts queued but whose anomaly row is gone.
    """

    kind: str
    target: str
    outbox_table: str
    guard_table: str
    guard_key: tuple[str, ...]

    def write(self, cur: psycopg.Cursor[Any], lines: pa.ChunkedArray, dry_run: bool, fresh: bool) -> TargetCounts:
        stage = f"_backfill_{self.outbox_table}"
        outbox, guard = sql.Identifier(self.outbox_table), sql.Identifier(self.guard_table)
        key_cols = sql.SQL(", ").join(sql.SQL("g.{}").format(sql.Identifier(k)) for k in self.guard_key)
        out_cols = sql.SQL(", ").join(sql.SQL("o.{}").format(sql.Identifier(c)) for c in W.OUTBOX_COLUMNS)
        cur.execute(
            sql.SQL(
                "CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS "
                "SELECT {key_cols}, {out_cols} FROM {guard} g, {outbox} o WITH NO DATA"
            ).format(stage=sql.Identifier(stage), key_cols=key_cols, out_cols=out_cols, guard=guard, outbox=outbox)
        )
        _stage(cur, stage, (*self.guard_key, *W.OUTBOX_COLUMNS), lines)
        not_recorded = sql.SQL("NOT EXISTS (SELECT 1 FROM {guard} g WHERE {match})").format(
            guard=guard,
            match=sql.SQL(" AND ").join(sql.SQL("g.{0} = s.{0}").format(sql.Identifier(k)) for k in self.guard_key),
        )
        staged = sql.Identifier(stage)
        if dry_run:
            query = sql.SQL(
                "SELECT count(*) FILTER (WHERE {not_recorded} AND NOT EXISTS "
                "(SELECT 1 FROM {outbox} o WHERE o.dedup_key = s.dedup_key)), count(*) FROM {staged} s"
            ).format(not_recorded=not_recorded, outbox=outbox, staged=staged)
        else:
            cols = sql.SQL(", ").join(map(sql.Identifier, W.OUTBOX_COLUMNS))
            query = sql.SQL(
                "WITH queued AS (INSERT INTO {outbox} ({cols}) SELECT {s_cols} FROM {staged} s WHERE {not_recorded} "
                "ON CONFLICT (dedup_key) DO NOTHING RETURNING 1) "
                "SELECT (SELECT count(*) FROM queued), (SELECT count(*) FROM {staged})"
            ).format(
                outbox=outbox,
                cols=cols,
                s_cols=sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in W.OUTBOX_COLUMNS),
                staged=staged,
                not_recorded=not_recorded,
            )
        cur.execute(query)
        found = cur.fetchone()
        assert found is not None
        new, total = int(found[0]), int(found[1])
        return TargetCounts(new=new, unchanged=total - new)


@dataclass(frozen=True)
class FoldTarget(WriteTarget):
    """Rows of `table`, by `key`, marked done: `stamp_column` set to now() where it is still NULL.

    The weather backfill marks the late readings it summed into their windows as folded. It is
    written after the summary target, in the same transaction, so a reading is never marked
    folded unless its window's rows were rewritten with it. Counts: changed = marked by this
    write, unchanged = marked before (or gone).
    """

    kind: str
    target: str
    table: str
    key: tuple[str, ...]
    stamp_column: str

    def write(self, cur: psycopg.Cursor[Any], lines: pa.ChunkedArray, dry_run: bool, fresh: bool) -> TargetCounts:
        stage = f"_backfill_{self.table}"
        table, staged, stamp = sql.Identifier(self.table), sql.Identifier(stage), sql.Identifier(self.stamp_column)
        cur.execute(
            sql.SQL(
                "CREATE TEMP TABLE IF NOT EXISTS {} ON COMMIT DELETE ROWS AS SELECT {} FROM {} WITH NO DATA"
            ).format(staged, sql.SQL(", ").join(map(sql.Identifier, self.key)), table)
        )
        _stage(cur, stage, self.key, lines)
        match = sql.SQL(" AND ").join(sql.SQL("t.{0} = s.{0}").format(sql.Identifier(k)) for k in self.key)
        if dry_run:
            query = sql.SQL(
                "SELECT (SELECT count(*) FROM {table} t JOIN {staged} s ON {match} WHERE t.{stamp} IS NULL), "
                "(SELECT count(*) FROM {staged})"
            ).format(table=table, staged=staged, match=match, stamp=stamp)
        else:
            query = sql.SQL(
                "WITH marked AS (UPDATE {table} t SET {stamp} = now() FROM {staged} s "
                "WHERE {match} AND t.{stamp} IS NULL RETURNING 1) "
                "SELECT (SELECT count(*) FROM marked), (SELECT count(*) FROM {staged})"
            ).format(table=table, staged=staged, match=match, stamp=stamp)
        cur.execute(query)
        found = cur.fetchone()
        assert found is not None
        marked, total = int(found[0]), int(found[1])
        return TargetCounts(changed=marked, unchanged=total - marked)


# One connection per Python worker: workers are reused across tasks and chunks.
_CONNECTIONS: dict[str, psycopg.Connection[Any]] = {}


def _connection(pg_url: str) -> psycopg.Connection[Any]:
    conn = _CONNECTIONS.get(pg_url)
    if conn is None or conn.closed or conn.broken:
        try:
            conn = psycopg.connect(plain_pg_url(pg_url), application_name="tributary-backfill")
        except psycopg.OperationalError as exc:
            raise SinkError(f"backfill: cannot connect to PostgreSQL: {exc}; check TRIBUTARY_PG_URL") from exc
        _CONNECTIONS[pg_url] = conn
    return conn


def _document_ids(lines: pa.ChunkedArray) -> list[tuple[str, str]]:
    """(index, id) of each bulk `create` line."""
    ids = []
    for line in lines.to_pylist():
        action = json.loads(line.split("\n", 1)[0])["create"]
        ids.append((action["_index"], action["_id"]))
    return ids


@dataclass(frozen=True)
class BackfillWrite:
    """Writes one Spark partition of lines (kind, line); pickled to the executors.

    All of a partition's table writes are one transaction (rolled back in a dry run), in the
    order of `tables`; documents go to Elasticsearch afterwards. Yields one count row per target.
    """

    settings: Settings
    label: str
    tables: tuple[WriteTarget, ...]
    es_target: str | None
    dry_run: bool
    # Targets without rows in this chunk's range (see WriteTarget.write).
    fresh: frozenset[str] = frozenset()

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        received = list(batches)
        if not received:
            return
        table = pa.Table.from_batches(received)
        kinds = table.column(KIND)
        results: dict[str, TargetCounts] = {}
        conn = _connection(self.settings.pg_url)
        try:
            with conn.transaction(), conn.cursor() as cur:
                for target in self.tables:
                    lines = table.filter(pc.equal(kinds, target.kind)).column(LINE)
                    if len(lines):
                        fresh = target.target in self.fresh
                        counts = target.write(cur, lines, self.dry_run, fresh)
                        results.setdefault(target.target, TargetCounts()).add(counts)
                if self.dry_run:
                    raise psycopg.Rollback()
        except psycopg.Error as exc:
            raise SinkError(
                f"{self.label}: writing failed: {exc.__class__.__name__}: {exc}; nothing of this part was "
                "committed, and a rerun of the backfill redoes it (every write is idempotent)"
            ) from exc
        if self.es_target is not None:
            docs = table.filter(pc.equal(kinds, self.es_target)).column(LINE)
            if len(docs):
                results[ES] = self._documents(docs)
        yield pa.RecordBatch.from_pylist([{"target": k, **asdict(v)} for k, v in results.items()], schema=RESULT_SCHEMA)

    def _documents(self, docs: pa.ChunkedArray) -> TargetCounts:
        es = es_client(self.settings)
        try:
            if not self.dry_run:
                result = ElasticsearchSink(es).write(self.label, docs)
                return TargetCounts(new=result.created, unchanged=result.already_present)
            ids = _document_ids(docs)
            present = 0
            for at in range(0, len(ids), 5_000):
                batch = [{"_index": index, "_id": doc_id} for index, doc_id in ids[at : at + 5_000]]
                try:
                    response = es.mget(docs=batch, source=False)
                except EsTransportError as exc:
                    raise SinkError(f"{self.label}: Elasticsearch mget failed: {exc}; check TRIBUTARY_ES_URL") from exc
                # A missing daily index answers with an error item: its documents are missing too.
                present += sum(1 for d in response["docs"] if d.get("found"))
            return TargetCounts(new=len(ids) - present, unchanged=present)
        finally:
            es.close()


# -------------------------------------------------------------------------------- pipelines


class PipelineBackfill(ABC):
    """How one pipeline recomputes its derived data from raw rows: one subclass per pipeline."""

    targets: ClassVar[tuple[str, ...]]

    def __init__(self, spark: SparkSession, settings: Settings, pipeline: Pipeline, platform: PlatformNames) -> None:
        self.spark = spark
        self.settings = settings
        self.pipeline = pipeline
        self.platform = platform

    @property
    @abstractmethod
    def margin(self) -> timedelta:
        """How far past a chunk events are needed to complete its windows (the longest window)."""

    @abstractmethod
    def read_columns(self, targets: Sequence[str]) -> list[str]:
        """Raw columns the targets need."""

    @abstractmethod
    def lines(self, events: DataFrame, chunk: Chunk, request: BackfillRequest) -> DataFrame:
        """(kind, line) rows to write for `chunk`, computed from `events` (its read range)."""

    @abstractmethod
    def write_targets(self, targets: Sequence[str]) -> tuple[WriteTarget, ...]:
        """The table targets of the chosen targets, in the order a partition writes them."""

    @classmethod
    def check_range(cls, pipeline: Pipeline, start: datetime, end: datetime) -> None:
        """Refuses a range this backfill cannot recompute exactly, saying what to choose (any, here)."""
        return None

    def document_kind(self, targets: Sequence[str]) -> str | None:
        """The kind of lines that are Elasticsearch bulk documents, when `es` is a target."""
        return ES if ES in targets else None

    def close(self) -> None:
        """Releases what the backfill cached in the session (nothing, unless a subclass caches)."""
        return None


class UserEventsBackfill(PipelineBackfill):
    """user_events: activity windows (5 s, 1 min sliding), anomalies, alerts, documents."""

    targets = TARGETS

    def __init__(self, spark: SparkSession, settings: Settings, pipeline: Pipeline, platform: PlatformNames) -> None:
        super().__init__(spark, settings, pipeline, platform)
        tables, rules = pipeline.tables, pipeline.anomaly
        if rules is None or tables.summary is None or tables.anomalies is None or tables.lookup is None:
            raise ValueError(f"pipeline {pipeline.name} lacks the summary/anomaly/lookup entries this backfill needs")
        if rules.window not in pipeline.windows:
            raise ValueError(f"{pipeline.name}: the anomaly window {rules.window.name} is not one of its windows")
        self.rules = rules
        self.summary_table, self.anomalies_table, self.users_table = tables.summary, tables.anomalies, tables.lookup
        self.actions: tuple[str, ...] = pipeline.validation.allowed_actions  # type: ignore[union-attr]
        self._users: DataFrame | None = None

    @property
    def margin(self) -> timedelta:
        return timedelta(seconds=max(w.duration_s for w in self.pipeline.windows))

    def read_columns(self, targets: Sequence[str]) -> list[str]:
        if ES in targets:
            return list(T.EVENT_COLUMNS)
        return ["event_ts", "user_id", "product_id", "action"]

    def users(self) -> DataFrame:
        """The users lookup, read once per backfill (the streaming job refreshes it every minute)."""
        if self._users is None:
            url, properties = jdbc_url(self.settings.pg_url)
            self._users = (
                self.spark.read.jdbc(url, self.users_table, properties=properties)
                .select("user_id", "name", "region")
                .cache()
            )
        return self._users

    def close(self) -> None:
        if self._users is not None:
            self._users.unpersist()
            self._users = None

    def write_targets(self, targets: Sequence[str]) -> tuple[WriteTarget, ...]:
        chosen: list[WriteTarget] = []
        # Alerts first: whether an anomaly was recorded before must be decided before this
        # backfill records it.
        if ALERTS in targets:
            chosen.append(AlertTarget("alert", ALERTS, self.platform.outbox_table, self.anomalies_table, W.WINDOW_KEY))
        if SUMMARIES in targets:
            chosen.append(
                UpsertTarget("summary", SUMMARIES, self.summary_table, W.SUMMARY_COLUMNS, W.WINDOW_KEY, "window_start")
            )
        if ANOMALIES in targets:
            chosen.append(
                UpsertTarget(
                    "anomaly", ANOMALIES, self.anomalies_table, W.ANOMALY_COLUMNS, W.WINDOW_KEY, "window_start"
                )
            )
        return tuple(chosen)

    def lines(self, events: DataFrame, chunk: Chunk, request: BackfillRequest) -> DataFrame:
        targets = request.targets
        parts: list[DataFrame] = []
        if ES in targets:
            # Documents of the chunk's own events only: its read range reaches into its neighbours'.
            own = events.where((F.col("event_ts") >= chunk.lo) & (F.col("event_ts") < chunk.hi))
            index = self.pipeline.indices["events"]
            parts.append(own.select(F.lit(ES).alias(KIND), W.event_document(index).alias(LINE)))
        scored = {ANOMALIES, ALERTS, ES} & set(targets)
        for window in self.pipeline.windows:
            is_anomaly_window = window == self.rules.window
            if SUMMARIES not in targets and not (is_anomaly_window and scored):
                continue
            start = F.col("window_start")
            windows = T.activity_windows(events, window, self.actions).where(
                (start >= chunk.window_lo)
                & (start < chunk.hi)
                # Windows that overlap the range: they start less than one window before it.
                & (start > request.start - timedelta(seconds=window.duration_s))
                & (start < request.end)
            )
            if SUMMARIES in targets:
                parts.append(windows.select(F.lit("summary").alias(KIND), W.summary_line(windows.schema).alias(LINE)))
            if is_anomaly_window and scored:
                anomalies = T.score_anomalies(T.enrich_with_users(windows, self.users()), self.rules)
                parts.append(anomalies.select(F.inline(F.array(*self._anomaly_lines(anomalies, targets)))))
        if not parts:
            raise ValueError(f"no lines for targets {targets}")
        lines = parts[0]
        for part in parts[1:]:
            lines = lines.unionByName(part)
        return lines

    def _anomaly_lines(self, anomalies: DataFrame, targets: Sequence[str]) -> list[Column]:
        lines = []
        if ANOMALIES in targets:
            lines.append(F.struct(F.lit("anomaly").alias(KIND), W.anomaly_line(anomalies.schema).alias(LINE)))
        if ALERTS in targets:
            # The streaming job's alert, plus the anomaly's key for the "recorded before" check.
            fields = [F.col(k) for k in W.WINDOW_KEY] + W.alert_fields(
                self.pipeline.name, self.platform.alerts_topic.name
            )
            lines.append(F.struct(F.lit("alert").alias(KIND), csv_line(*fields).alias(LINE)))
        if ES in targets:
            document = W.anomaly_document(self.pipeline.indices["anomalies"])
            lines.append(F.struct(F.lit(ES).alias(KIND), document.alias(LINE)))
        return lines


# The weather backfill's second count: late readings it folded into their windows' summaries.
LATE_READINGS = "late_readings"
HOUR = timedelta(hours=1)


class WeatherBackfill(PipelineBackfill):
    """weather: hourly summaries per station and over all stations from every raw reading, late
    ones included; the late readings of the rewritten windows are marked folded.

    Only the summaries target: rewriting a window from all its readings and folding its late
    readings are one act (either alone would leave `weather_late_readings` saying something
    untrue about `weather_summary`).
    """

    targets = (SUMMARIES,)
    # A reading's position in its topic: how the late-readings table names it.
    POSITION = ("topic", "kafka_partition", "kafka_offset")

    def __init__(self, spark: SparkSession, settings: Settings, pipeline: Pipeline, platform: PlatformNames) -> None:
        super().__init__(spark, settings, pipeline, platform)
        tables = pipeline.tables
        if tables.summary is None or tables.late is None or len(pipeline.windows) != 1:
            raise ValueError(f"pipeline {pipeline.name} lacks the summary, late table or its one window")
        self.window = pipeline.windows[0]
        if self.window.slide_s is not None or HOUR.total_seconds() % self.window.duration_s:
            raise ValueError(
                f"{pipeline.name}: window {self.window.name} does not tile an hour; the backfill's hour-aligned "
                "chunks would cut it"
            )
        self.summary_table, self.late_table = tables.summary, tables.late

    @classmethod
    def check_range(cls, pipeline: Pipeline, start: datetime, end: datetime) -> None:
        def whole_hour(at: datetime) -> bool:
            return at == at.replace(minute=0, second=0, microsecond=0)

        if not (whole_hour(start) and whole_hour(end)):
            floor = start.replace(minute=0, second=0, microsecond=0)
            ceil = end.replace(minute=0, second=0, microsecond=0)
            ceil += HOUR if ceil < end else timedelta(0)
            raise ValueError(
                f"{pipeline.name} summaries are hourly windows, so the range must start and end on whole hours "
                f"(UTC): a window cut by the range would be recomputed from part of its readings; choose "
                f"{floor.isoformat()} to {ceil.isoformat()}"
            )

    @property
    def margin(self) -> timedelta:
        # Tumbling windows tile each hour and chunks are whole hours (check_range): a chunk's
        # windows lie inside it, so its own readings are all they need.
        return timedelta(0)

    def read_columns(self, targets: Sequence[str]) -> list[str]:
        return [*self.POSITION, "event_ts", "station_id", *WT.MEASURES]

    def write_targets(self, targets: Sequence[str]) -> tuple[WriteTarget, ...]:
        # The summary rows first: a partition's fold is written only after its windows' rows.
        return (
            UpsertTarget(
                "summary",
                SUMMARIES,
                self.summary_table,
                WT.SUMMARY_COLUMNS,
                WT.SUMMARY_KEY,
                "window_start",
                approx=tuple(f"sum_{m}" for m in WT.MEASURES),
                stamp_column="updated_at",
            ),
            FoldTarget("fold", LATE_READINGS, self.late_table, self.POSITION, "folded_at"),
        )

    def late_readings(self, low: datetime, high: datetime) -> DataFrame:
        """Positions of the late readings of [low, high) not folded yet (one JDBC query, few rows)."""
        url, properties = jdbc_url(self.settings.pg_url)
        window = f"event_ts >= '{low.isoformat()}'::timestamptz AND event_ts < '{high.isoformat()}'::timestamptz"
        return self.spark.read.jdbc(
            url, self.late_table, predicates=[f"folded_at IS NULL AND {window}"], properties=properties
        ).select(*self.POSITION, "event_ts")

    def lines(self, events: DataFrame, chunk: Chunk, request: BackfillRequest) -> DataFrame:
        key = [*self.POSITION, "event_ts"]
        late = self.late_readings(chunk.lo, chunk.hi).withColumn("_late", F.lit(True))
        # Fold exactly the late readings that this read of the raw table summed: the flag rides on
        # each raw row through the one aggregation, so a late reading committed after its hour
        # was read stays unfolded for the next backfill.
        flagged = events.join(F.broadcast(late), key, "left")
        position = F.struct(*(F.col(c) for c in self.POSITION))
        windows = WT.summary_sums(
            flagged, self.window, F.collect_list(F.when(F.col("_late"), position)).alias("_folded")
        )
        summary = F.struct(F.lit("summary").alias(KIND), copy_line(windows.schema, WT.SUMMARY_COLUMNS).alias(LINE))
        # Each late reading once: from its window's row over all stations.
        none = F.array().cast(windows.schema["_folded"].dataType)
        folded = F.transform(
            F.when(F.col("station_id") == WT.ALL_STATIONS, F.col("_folded")).otherwise(none),
            lambda p: F.struct(
                F.lit("fold").alias(KIND), csv_line(p["topic"], p["kafka_partition"], p["kafka_offset"]).alias(LINE)
            ),
        )
        lines = windows.select("window_start", F.inline(F.concat(F.array(summary), folded)))
        # A window's rows and folds in one Spark partition: one transaction writes them all.
        return lines.repartition("window_start").select(KIND, LINE)


# Backfills by pipeline name; the DAG's and the command line's choice of pipelines follows it.
BACKFILLS: dict[str, type[PipelineBackfill]] = {"user_events": UserEventsBackfill, "weather": WeatherBackfill}


def backfill_pipelines() -> list[str]:
    """Catalog pipelines that have a backfill, in catalog order."""
    return [name for name in PIPELINES if name in BACKFILLS]


# --------------------------------------------------------------------------------- progress


class Progress:
    """Reports a backfill's progress: to the log (Airflow's task log), or as a bar on a terminal."""

    # While a chunk runs, a log line this often (seconds) shows it is still advancing.
    heartbeat_s = 15.0

    def __init__(self, spark: SparkSession, stream: TextIO | None = None, bar: bool = False) -> None:
        self._tracker = spark.sparkContext.statusTracker()
        self._stream = stream or sys.stdout
        self._bar = bar
        self._report: BackfillReport | None = None
        self._chunk: Chunk | None = None
        self._chunks = 0
        self._group: str | None = None
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_terminal(cls, spark: SparkSession) -> Progress:
        """A bar on stdout when it is a terminal, log lines otherwise."""
        return cls(spark, sys.stdout, bar=sys.stdout.isatty())

    def begin(self, report: BackfillReport, chunks: int) -> None:
        self._report, self._chunks, self._started = report, chunks, time.monotonic()
        log.info(
            "backfill %s: %s rows to read from %s to %s in %s chunk(s); targets %s%s",
            report.request.pipeline,
            f"{report.rows_planned:,}",
            report.request.start.isoformat(),
            report.request.end.isoformat(),
            chunks,
            ", ".join(report.request.targets),
            " (dry run: nothing is written)" if report.request.dry_run else "",
        )
        self._thread = threading.Thread(target=self._watch, name="backfill-progress", daemon=True)
        self._thread.start()

    def chunk_started(self, chunk: Chunk, group: str) -> None:
        self._chunk, self._group = chunk, group

    def chunk_done(self, chunk: Chunk, seconds: float) -> None:
        self._chunk = None
        assert self._report is not None
        if self._bar:
            self._draw(0.0)
        else:
            log.info("%s; chunk %s/%s in %.1f s", self._report.progress_line(), chunk.number, self._chunks, seconds)

    def end(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._bar:
            self._draw(0.0)
            self._stream.write("\n")
            self._stream.flush()
        if self._report is not None:
            log.info("%s", self._report.progress_line())

    def chunk_fraction(self) -> tuple[float, int, int]:
        """(fraction, done, total) of the tasks Spark knows of for the running chunk."""
        if self._group is None:
            return 0.0, 0, 0
        done = total = 0
        for job_id in self._tracker.getJobIdsForGroup(self._group):
            job = self._tracker.getJobInfo(job_id)
            for stage_id in job.stageIds if job else ():
                stage = self._tracker.getStageInfo(stage_id)
                if stage is not None:
                    done, total = done + stage.numCompletedTasks, total + stage.numTasks
        # Stages still to come are not known yet: never claim the chunk is finished.
        return (min(done / total, 0.99) if total else 0.0), done, total

    def _watch(self) -> None:
        last_line = time.monotonic()
        while not self._stop.wait(0.5):
            chunk, report = self._chunk, self._report
            if chunk is None or report is None:
                continue
            fraction, done, total = self.chunk_fraction()
            if self._bar:
                self._draw(fraction * chunk.rows)
            elif time.monotonic() - last_line >= self.heartbeat_s:
                last_line = time.monotonic()
                log.info(
                    "backfill %s: chunk %s/%s (%s rows from %s) running, %s of %s tasks done",
                    report.request.pipeline,
                    chunk.number,
                    self._chunks,
                    f"{chunk.rows:,}",
                    chunk.lo.isoformat(),
                    done,
                    total,
                )

    def _draw(self, extra_rows: float) -> None:
        report = self._report
        if report is None:
            return
        total = max(report.rows_planned, 1)
        rows = min(report.rows_read + extra_rows, total)
        fraction = rows / total if report.rows_planned else (1.0 if self._chunk is None else 0.0)
        width = 30
        filled = int(width * fraction)
        elapsed = time.monotonic() - self._started
        rate = rows / elapsed if elapsed > 0 else 0.0
        eta = (total - rows) / rate if rate > 0 else float("nan")
        eta_text = f"{eta:4.0f}s" if math.isfinite(eta) else "   ?"
        self._stream.write(
            f"\rbackfill {report.request.pipeline} [{'#' * filled}{'.' * (width - filled)}] {100 * fraction:5.1f}% "
            f"{int(rows):>12,}/{report.rows_planned:,} rows {rate:>9,.0f} rows/s eta {eta_text} "
        )
        self._stream.flush()


# ----------------------------------------------------------------------------------- record


class BackfillRuns:
    """The `backfill_runs` table: a row per run, its progress, and how it ended."""

    def __init__(self, pg_url: str, table: str = PLATFORM.backfill_runs_table) -> None:
        self.pg_url = pg_url
        self.table = sql.Identifier(table)

    def _execute(self, query: sql.Composed, params: Sequence[Any]) -> Any:
        try:
            with psycopg.connect(plain_pg_url(self.pg_url), application_name="tributary-backfill") as conn:
                return conn.execute(query, params).fetchone()
        except psycopg.errors.UndefinedTable as exc:
            raise RuntimeError(f"{exc}; the backfill needs migration 0005.backfill: run `tributary migrate`") from exc

    def start(self, request: BackfillRequest) -> int:
        row = self._execute(
            sql.SQL(
                "INSERT INTO {} (pipeline, range_start, range_end, targets, dry_run, requested_by) "
                "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id"
            ).format(self.table),
            (
                request.pipeline,
                request.start,
                request.end,
                list(request.targets),
                request.dry_run,
                request.requested_by,
            ),
        )
        return int(row[0])

    def update(self, report: BackfillReport) -> None:
        finished = report.state != "running"
        self._execute(
            sql.SQL(
                "UPDATE {} SET state = %s, rows_planned = %s, rows_read = %s, written = %s, error = %s, "
                "finished_at = CASE WHEN %s THEN now() END WHERE id = %s RETURNING id"
            ).format(self.table),
            (
                report.state,
                report.rows_planned,
                report.rows_read,
                json.dumps({k: asdict(v) for k, v in report.targets.items()}),
                report.error,
                finished,
                report.run_id,
            ),
        )


# -------------------------------------------------------------------------------------- run


def hour_rows(settings: Settings, pipeline: Pipeline, start: datetime, end: datetime) -> dict[datetime, int]:
    """Raw rows per UTC hour of [start, end) (hours without rows are missing)."""
    query = sql.SQL(
        "SELECT date_trunc('hour', event_ts AT TIME ZONE 'UTC'), count(*) FROM {} "
        "WHERE event_ts >= %s AND event_ts < %s GROUP BY 1"
    ).format(sql.Identifier(pipeline.tables.raw))
    with psycopg.connect(plain_pg_url(settings.pg_url), application_name="tributary-backfill") as conn:
        rows = conn.execute(query, (start, end)).fetchall()
    return {hour.replace(tzinfo=UTC): int(count) for hour, count in rows}


def run_backfill(
    spark: SparkSession,
    settings: Settings,
    request: BackfillRequest,
    *,
    pipeline: Pipeline | None = None,
    platform: PlatformNames = PLATFORM,
    progress: Progress | None = None,
    rows_per_chunk: int = DEFAULT_ROWS_PER_CHUNK,
    now: datetime | None = None,
) -> BackfillReport:
    """Runs `request` chunk by chunk; returns the report, or raises BackfillError (recorded as failed).

    `pipeline` defaults to the catalog entry of `request.pipeline` (tests pass one with names of
    their own).
    """
    entry = pipeline or get_pipeline(request.pipeline)
    request.check(entry, now or datetime.now(UTC))
    backfill = BACKFILLS[entry.name](spark, settings, entry, platform)
    progress = progress or Progress(spark)
    runs = BackfillRuns(settings.pg_url, platform.backfill_runs_table)
    report = BackfillReport(request)
    report.run_id = runs.start(request)
    stack = contextlib.ExitStack()
    started = time.monotonic()
    try:
        stack.enter_context(batch_conf(spark))
        stack.callback(backfill.close)
        counts = hour_rows(settings, entry, request.start, request.end)
        chunks = plan_chunks(request.start, request.end, counts, rows_per_chunk, backfill.margin)
        report.rows_planned = sum(counts.values())
        for written in backfill.write_targets(request.targets):  # reported even when nothing is found
            report.targets.setdefault(written.target, TargetCounts())
        runs.update(report)
        progress.begin(report, len(chunks))
        for chunk in chunks:
            chunk_started = time.monotonic()
            for target, done in _run_chunk(spark, settings, backfill, chunk, request, progress).items():
                report.targets.setdefault(target, TargetCounts()).add(done)
            report.rows_read += chunk.rows
            report.chunks += 1
            report.seconds = time.monotonic() - started
            progress.chunk_done(chunk, time.monotonic() - chunk_started)
            runs.update(report)
        if ALERTS in request.targets and not request.dry_run and report.targets[ALERTS].new:
            report.published = _publish_alerts(settings)
        report.state = "succeeded"
    except (Exception, KeyboardInterrupt) as error:  # recorded, then raised again for the caller
        stopped = f"stopped by signal {_STOPPED_BY[0]}; " if _STOPPED_BY else ""
        report.state, report.error = "failed", f"{stopped}{error.__class__.__name__}: {error}"[:4000]
        log.error("backfill %s failed: %s", request.pipeline, report.error)
        raise BackfillError(report.error, report) from error
    finally:
        stack.close()
        report.seconds = time.monotonic() - started
        progress.end()
        runs.update(report)
    return report


@contextlib.contextmanager
def batch_conf(spark: SparkSession) -> Iterator[None]:
    """BATCH_CONF on the session while the backfill runs, the previous values restored after."""
    previous: dict[str, str | None] = {key: spark.conf.get(key, None) for key in BATCH_CONF}
    for key, value in BATCH_CONF.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, old in previous.items():
            if old is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, old)


def _run_chunk(
    spark: SparkSession,
    settings: Settings,
    backfill: PipelineBackfill,
    chunk: Chunk,
    request: BackfillRequest,
    progress: Progress,
) -> dict[str, TargetCounts]:
    low, high = chunk.read_range(backfill.margin)
    label = f"backfill {request.pipeline} chunk {chunk.number} [{chunk.lo.isoformat()}, {chunk.hi.isoformat()})"
    group = f"tributary-backfill-{request.pipeline}-{chunk.number}"
    spark.sparkContext.setJobGroup(group, label)
    progress.chunk_started(chunk, group)
    # Not cached: each window length reads the slices again, which costs less than caching them
    # (measured), and the 1-minute windows' shuffle is reused by the summary and anomaly lines.
    events = read_raw_range(
        spark,
        settings,
        backfill.pipeline,
        low,
        high,
        columns=backfill.read_columns(request.targets),
        hours_per_slice=chunk.hours_per_slice(),
    )
    tables = backfill.write_targets(request.targets)
    write = BackfillWrite(
        settings,
        label,
        tables,
        backfill.document_kind(request.targets),
        request.dry_run,
        fresh=_fresh_targets(settings, tables, chunk.window_lo, chunk.hi),
    )
    rows = backfill.lines(events, chunk, request).mapInArrow(write, RESULT_DDL).collect()
    totals: dict[str, TargetCounts] = {}
    for row in rows:
        totals.setdefault(row["target"], TargetCounts()).add(TargetCounts(row["new"], row["changed"], row["unchanged"]))
    return totals


def _fresh_targets(settings: Settings, tables: Sequence[WriteTarget], low: datetime, high: datetime) -> frozenset[str]:
    """Targets with no rows at all in [low, high): their lines can be copied straight in."""
    with psycopg.connect(plain_pg_url(settings.pg_url), application_name="tributary-backfill") as conn:
        return frozenset(t.target for t in tables if t.empty_between(conn, low, high))


def _publish_alerts(settings: Settings) -> int:
    """Publishes the alerts this backfill queued (and any others pending) to Kafka."""
    sink = PostgresSink(settings.pg_url, application_name="tributary-backfill")
    publisher = OutboxPublisher(sink, kafka_config(settings))
    try:
        return publisher.publish_pending().published
    finally:
        publisher.close()
        sink.close()


# -------------------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m spark_jobs.batch.backfill",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--pipeline", required=True, choices=backfill_pipelines(), help="catalog pipeline")
    parser.add_argument("--start", required=True, help="range start (inclusive), ISO 8601 with zone: 2026-11-23T00:00Z")
    parser.add_argument("--end", required=True, help="range end (exclusive), ISO 8601 with zone")
    parser.add_argument(
        "--targets",
        default=None,
        help=f"comma-separated: {','.join(TARGETS)} (default: every target the pipeline's backfill has)",
    )
    parser.add_argument("--dry-run", action="store_true", help="report what would change, write nothing")
    parser.add_argument("--requested-by", default=None, help="recorded with the run (e.g. the Airflow run)")
    parser.add_argument(
        "--rows-per-chunk", type=int, default=DEFAULT_ROWS_PER_CHUNK, help="raw rows per Spark job (progress step)"
    )
    parser.add_argument(
        "--master", default=None, help="Spark master (default: TRIBUTARY_SPARK_MASTER unless spark-submit set one)"
    )
    return parser.parse_args(list(argv))


def _print_summary(summary: Mapping[str, Any]) -> None:
    print(json.dumps(summary, default=_json_default), flush=True)


def _json_default(value: object) -> str:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one backfill from the command line; see the module docstring."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        targets = args.targets if args.targets is not None else BACKFILLS[args.pipeline].targets
        request = BackfillRequest.parse(
            args.pipeline, args.start, args.end, targets, args.dry_run, args.requested_by or "cli"
        )
    except ValueError as error:
        print(f"backfill: {error}", file=sys.stderr)
        return 2
    settings = load_settings()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # Raised in the main thread, so the run is recorded as failed before the driver exits.
        _STOPPED_BY.append(signum)
        raise BackfillInterrupted(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    master = args.master or (None if launched_by_spark_submit() else settings.spark_master)
    # Spark's own console bar would garble ours (and the Airflow task log).
    spark = build_session(f"tributary-backfill-{request.pipeline}", master, {"spark.ui.showConsoleProgress": "false"})
    try:
        report = run_backfill(
            spark, settings, request, progress=Progress.for_terminal(spark), rows_per_chunk=args.rows_per_chunk
        )
    except BackfillError as error:
        _print_summary(error.report.summary())
        return 1
    except ValueError as error:  # refused before anything ran (range, targets)
        log.error("backfill %s refused: %s", request.pipeline, error)
        _print_summary({RESULT_KEY: request.pipeline, "state": "refused", "error": str(error)})
        return 2
    finally:
        spark.stop()
    _print_summary(report.summary())
    return 0


if __name__ == "__main__":
    # Run as a file (spark-submit): import the module under its package name, so the classes the
    # executors unpickle resolve by reference instead of as copies of `__main__`.
    from spark_jobs.batch import backfill

    sys.exit(backfill.main())
