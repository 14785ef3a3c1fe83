"""PostgreSQL sink: COPY into a staging table, then merge into the target with ON CONFLICT.

Replays are harmless: raw rows are keyed by source position (`DO NOTHING`), summaries by
(key, window) (`DO UPDATE` with the recomputed values). Everything one micro-batch writes goes
through one `PostgresBatch` transaction, so rows and the outbox messages they cause commit
together or not at all.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql

from tributary.clients import plain_pg_url

log = logging.getLogger(__name__)


class SinkError(RuntimeError):
    """A write to a sink failed; the message names the table, the batch and what to check."""


@dataclass(frozen=True)
class MergeTarget:
    """How rows land in one table: its key and whether a replayed key updates or is skipped."""

    table: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    update: bool = False

    def merge_sql(self, stage: str) -> sql.Composed:
        cols = sql.SQL(", ").join(map(sql.Identifier, self.columns))
        conflict: sql.Composable
        if self.update:
            updates = [c for c in self.columns if c not in self.key]
            conflict = sql.SQL("({}) DO UPDATE SET {}").format(
                sql.SQL(", ").join(map(sql.Identifier, self.key)),
                sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in updates),
            )
        else:
            conflict = sql.SQL("DO NOTHING")
        return sql.SQL("INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} ON CONFLICT {conflict}").format(
            table=sql.Identifier(self.table), cols=cols, stage=sql.Identifier(stage), conflict=conflict
        )


def epoch_window_start(column: str) -> sql.Composed:
    """The start of `column`'s window of `%(seconds)s` seconds, aligned to the epoch in UTC as
    Spark's `window()` aligns them (so SQL and Spark put a row in the same window)."""
    return sql.SQL(
        "date_bin(make_interval(secs => %(seconds)s), {column}, '1970-01-01 00:00:00+00'::timestamptz)"
    ).format(column=sql.Identifier(column))


class PostgresSink:
    """Long-lived connections for one job, one per thread; `batch()` opens a micro-batch's transaction.

    Each streaming query calls its batch function from a thread of its own, so a connection (and
    the transaction on it) must never be shared between threads.
    """

    def __init__(self, pg_url: str, *, application_name: str) -> None:
        self._url = plain_pg_url(pg_url)
        self._application_name = application_name
        self._local = threading.local()
        self._all: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._partitions_known: set[tuple[str, date]] = set()

    def connection(self) -> psycopg.Connection[Any]:
        """This thread's connection, opened (again) when missing or broken."""
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            try:
                conn = psycopg.connect(self._url, application_name=self._application_name)
            except psycopg.OperationalError as exc:
                raise SinkError(
                    f"cannot connect to PostgreSQL for {self._application_name}: {exc}; check TRIBUTARY_PG_URL"
                ) from exc
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def ensure_day_partitions(self, table: str, days: Iterable[date]) -> None:
        """Creates the day partitions rows will land in, each in a short transaction of its own.

        Creating a partition locks the parent table; doing it apart from the data transaction
        keeps that lock brief when several writers run at once. Known days are skipped.
        """
        conn = self.connection()
        for day in sorted(set(days)):
            if (table, day) in self._partitions_known:
                continue
            try:
                with conn.transaction():
                    conn.execute("SELECT ensure_day_partition(%s, %s)", (table, day))
            except psycopg.Error as exc:
                raise SinkError(
                    f"creating the {day} partition of {table} failed: {exc}; are the migrations applied?"
                ) from exc
            self._partitions_known.add((table, day))

    def batch(self, label: str) -> PostgresBatch:
        return PostgresBatch(self, label)

    def close(self) -> None:
        """Close the connections of every thread."""
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()


class PostgresBatch:
    """One transaction: merge tables, enqueue outbox messages, record counts; commit on exit."""

    def __init__(self, sink: PostgresSink, label: str) -> None:
        self._sink = sink
        self.label = label
        self.counts: dict[str, int] = {}

    def __enter__(self) -> PostgresBatch:
        self._conn = self._sink.connection()
        self._cur = self._conn.cursor()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._cur.close()
        if exc_type is not None:
            self._conn.rollback()
            return
        self._conn.commit()

    def stage(self, target: MergeTarget, payload: Iterable[memoryview | bytes]) -> str:
        """COPY `payload` (CSV lines of `target.columns`) into the target's staging table; its name.

        The staging table is temporary and emptied at commit, so each batch starts from nothing.
        """
        stage = f"_stage_{target.table}"
        cols = sql.SQL(", ").join(map(sql.Identifier, target.columns))
        with self._errors(target.table):
            self._cur.execute(
                sql.SQL(
                    "CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                ).format(stage=sql.Identifier(stage), table=sql.Identifier(target.table))
            )
            with self._cur.copy(
                sql.SQL("COPY {stage} ({cols}) FROM STDIN (FORMAT csv)").format(stage=sql.Identifier(stage), cols=cols)
            ) as copy:
                for chunk in payload:
                    copy.write(chunk)
        return stage

    def copy_new(self, target: MergeTarget, payload: Iterable[memoryview | bytes]) -> int | None:
        """COPY `payload` straight into the target; None (nothing written) if a key already exists.

        About twice as fast as staging and merging. Runs in a savepoint, so a key conflict (a
        replayed range) undoes only this COPY; the caller then merges through staging instead.
        """
        cols = sql.SQL(", ").join(map(sql.Identifier, target.columns))
        statement = sql.SQL("COPY {table} ({cols}) FROM STDIN (FORMAT csv)").format(
            table=sql.Identifier(target.table), cols=cols
        )
        try:
            with self._conn.transaction(), self._cur.copy(statement) as copy:
                for chunk in payload:
                    copy.write(chunk)
        except psycopg.errors.UniqueViolation:
            return None
        except psycopg.Error as exc:
            with self._errors(target.table):
                raise exc
        copied = self._cur.rowcount
        self.counts[target.table] = self.counts.get(target.table, 0) + copied
        return copied

    def merge(self, target: MergeTarget, payload: Iterable[memoryview | bytes]) -> int:
        """COPY `payload` (CSV lines of `target.columns`) into staging, merge; returns rows merged."""
        stage = self.stage(target, payload)
        with self._errors(target.table):
            self._cur.execute(target.merge_sql(stage))
            merged = self._cur.rowcount
        self.counts[target.table] = self.counts.get(target.table, 0) + merged
        return merged

    def query_one(self, statement: sql.Composable | str, params: Mapping[str, Any], table: str) -> tuple[Any, ...]:
        """Runs a statement writing `table` (named in errors) and returns its one result row."""
        with self._errors(table):
            self._cur.execute(statement, params)  # type: ignore[arg-type]
            row = self._cur.fetchone()
        if row is None:
            raise SinkError(f"{self.label}: writing {table} returned no result row")
        return tuple(row)

    def fetch_all(
        self, statement: sql.Composable | str, params: Mapping[str, Any], table: str
    ) -> list[tuple[Any, ...]]:
        """Runs a statement writing `table` (named in errors) and returns every result row."""
        with self._errors(table):
            self._cur.execute(statement, params)  # type: ignore[arg-type]
            return [tuple(row) for row in self._cur.fetchall()]

    @contextmanager
    def _errors(self, table: str) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            raise SinkError(
                f"{self.label}: writing {table} failed: {exc.__class__.__name__}: {exc}".rstrip()
                + "; the batch is rolled back and will be retried from the checkpoint"
            ) from exc

    def execute(self, statement: sql.Composable | str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> int:
        self._cur.execute(statement, params)  # type: ignore[arg-type]
        return self._cur.rowcount
