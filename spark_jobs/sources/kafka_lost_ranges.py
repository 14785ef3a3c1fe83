"""Where the Kafka source records the offset ranges it skips: a PostgreSQL table.

With `failOnDataLoss=false`, records the query should have read but cannot (retention deleted
them, the log was truncated or replaced) are skipped. The options `lostRanges.pgUrl`,
`lostRanges.table` and `lostRanges.job` make the source also write one row per skipped range to
that table (migration 0009's `kafka_lost_ranges`, which reconciliation reports), wherever it finds
the loss: the driver while planning a batch, a task while reading one.

Rows are keyed by (topic, kafka_partition, from_offset), so finding the same loss again (the driver,
then the task reading that range; a replayed batch; another query on the same topic) leaves one
row. A failed write raises: the query stops rather than skip records without a trace.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from spark_jobs.sources.kafka_offsets import LostRange

log = logging.getLogger(__name__)

# Option names as Spark users write them, by their lower-cased form (Spark lower-cases options).
LOST_RANGE_OPTIONS = {
    "lostranges.pgurl": "lostRanges.pgUrl",
    "lostranges.table": "lostRanges.table",
    "lostranges.job": "lostRanges.job",
}
LOST_RANGE_PREFIX = "lostranges."
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
CONNECT_TIMEOUT_S = 10

# A later sighting of a loss that starts at the same offset may reach further (retention deleted
# more between the driver's planning and the task's read): the row grows to cover it, never shrinks.
_UPSERT = """
INSERT INTO {table} AS t (job_name, topic, kafka_partition, from_offset, to_offset, reason)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (topic, kafka_partition, from_offset) DO UPDATE
    SET to_offset = EXCLUDED.to_offset, reason = EXCLUDED.reason
    WHERE EXCLUDED.to_offset > t.to_offset
"""


class LostRangeRecordError(RuntimeError):
    """Lost records were found and skipped, but writing them to the lost-ranges table failed."""


def is_lost_range_option(name: str) -> bool:
    """True for an option of the lost-ranges table (`lostRanges.*`, any case)."""
    return name.lower().startswith(LOST_RANGE_PREFIX)


@dataclass(frozen=True)
class LostRangesTable:
    """The table lost ranges are recorded in, the database holding it, and the job recording them."""

    pg_url: str = field(repr=False)  # may carry a password
    table: str
    job: str

    @classmethod
    def from_options(cls, options: Mapping[str, str]) -> LostRangesTable | None:
        """From lower-cased `lostranges.*` options: None when none is given, else all three, checked."""
        given = {name: value.strip() for name, value in options.items() if name in LOST_RANGE_OPTIONS}
        if not given:
            return None
        missing = [LOST_RANGE_OPTIONS[name] for name in LOST_RANGE_OPTIONS if not given.get(name)]
        if missing:
            raise ValueError(
                "options lostRanges.pgUrl, lostRanges.table and lostRanges.job go together (where and as which "
                f"job skipped Kafka ranges are recorded); missing or empty: {', '.join(missing)}"
            )
        pg_url, table = given["lostranges.pgurl"], given["lostranges.table"]
        if not pg_url.startswith("postgres") or "://" not in pg_url:
            raise ValueError("option lostRanges.pgUrl must be a PostgreSQL URL: postgresql://user@host:port/db")
        if not _TABLE_NAME.fullmatch(table):
            raise ValueError(
                f"option lostRanges.table={table!r} must be a table name, optionally schema-qualified "
                "(e.g. kafka_lost_ranges)"
            )
        return cls(pg_url=pg_url, table=table, job=given["lostranges.job"])

    def record(self, ranges: Sequence[LostRange]) -> None:
        """Write `ranges` (idempotent: one row per topic, partition and first lost offset); raises on failure."""
        if not ranges:
            return
        from tributary.clients import pg_connect  # not at module level: executors import this module

        statement = sql.SQL(_UPSERT).format(table=sql.Identifier(*self.table.split(".")))
        rows = [(self.job, r.topic, r.partition, r.start, r.end, r.reason) for r in ranges]
        try:
            with (
                pg_connect(
                    self.pg_url, connect_timeout=CONNECT_TIMEOUT_S, application_name=f"tributary-{self.job}-lost-ranges"
                ) as conn,
                conn.cursor() as cursor,
            ):
                cursor.executemany(statement, rows)
        except psycopg.Error as exc:
            raise LostRangeRecordError(self._failure(ranges, exc)) from exc
        log.info("%s: recorded lost Kafka records in %s: %s", self.job, self.table, "; ".join(_text(r) for r in ranges))

    def _failure(self, ranges: Sequence[LostRange], exc: Exception) -> str:
        from tributary.stack.postgres import redact_url

        return (
            f"{self.job}: Kafka records were lost ({'; '.join(r.reason for r in ranges)}) and recording them in "
            f"table {self.table} at {redact_url(self.pg_url)} failed: {str(exc).strip()}. The query stops rather "
            "than skip them without a trace: make the database reachable and migrated (the tributary_bootstrap "
            "DAG creates the table), then restart the query; or set failOnDataLoss=true to fail on lost records."
        )


def _text(lost: LostRange) -> str:
    end = "?" if lost.end is None else str(lost.end)
    return f"{lost.topic}-{lost.partition} [{lost.start}, {end})"
