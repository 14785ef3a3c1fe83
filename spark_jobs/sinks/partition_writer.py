"""Write a micro-batch from the executors, one transaction per Spark partition.

Each task holds one Kafka offset range. It merges its raw rows, dead letters and outbox messages
in one PostgreSQL transaction and indexes its documents, then returns a one-row summary. Nothing
but those summaries reaches the driver, so a batch of large records cannot exhaust its memory,
and partitions are written in parallel. A failed task fails the batch; Spark replays it from the
checkpoint and the idempotent merges make the replay harmless.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from spark_jobs.sinks.copy_lines import copy_payload
from spark_jobs.sinks.elasticsearch import ElasticsearchSink
from spark_jobs.sinks.postgres import MergeTarget, PostgresBatch, PostgresSink
from tributary.clients import es_client
from tributary.settings import Settings

# Columns of the lines DataFrame a `RawBatchWrite` reads: what each line is, the line, the day
# partition and event time of a raw row, the failed rules of a dead letter.
KIND, LINE, DAY, EVENT_TS, VIOLATIONS = "kind", "line", "day", "event_ts", "violations"

RESULT_SCHEMA = pa.schema(
    [
        ("rows", pa.int64()),
        ("valid", pa.int64()),
        ("dead", pa.int64()),
        ("raw_new", pa.int64()),
        ("es_created", pa.int64()),
        ("es_present", pa.int64()),
        ("violations", pa.string()),
        # Valid rows behind the watermark (pipelines that keep late rows aside).
        ("late", pa.int64()),
        # The newest event time among the valid rows, in epoch microseconds (null: none).
        ("max_event_us", pa.int64()),
        # JSON list of the window starts (epoch seconds) the valid rows fall in, when asked for.
        ("touched", pa.string()),
    ]
)
RESULT_DDL = (
    "rows long, valid long, dead long, raw_new long, es_created long, es_present long, violations string, "
    "late long, max_event_us long, touched string"
)

# One connection per Python worker and database: workers are reused across tasks and batches.
_SINKS: dict[tuple[str, str], PostgresSink] = {}


def _sink(pg_url: str, application_name: str) -> PostgresSink:
    key = (pg_url, application_name)
    if key not in _SINKS:
        _SINKS[key] = PostgresSink(pg_url, application_name=application_name)
    return _SINKS[key]


@dataclass(frozen=True)
class RawBatchWrite:
    """Where one batch's lines go; pickled to the executors."""

    settings: Settings
    label: str
    raw: MergeTarget
    dead: MergeTarget
    outbox: MergeTarget
    es_enabled: bool
    # Report the distinct windows of this width (seconds) the valid rows fall in (`touched`).
    touched_window_s: int | None = None

    def merge_raw(self, batch: PostgresBatch, raw: pa.Table) -> tuple[int, int]:
        """Merges the raw lines; returns (rows new to the table, rows set aside as late)."""
        return batch.merge(self.raw, copy_payload(raw.column(LINE))), 0

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        table = pa.Table.from_batches(list(batches))
        if table.num_rows == 0:
            return
        kinds = table.column(KIND)

        def lines(kind: str) -> pa.Table:
            return table.filter(pc.equal(kinds, kind))

        raw, dead = lines("raw"), lines("dead")
        sink = _sink(self.settings.pg_url, "tributary-raw-writer")
        sink.ensure_day_partitions(self.raw.table, [d for d in pc.unique(raw.column(DAY)).to_pylist() if d])
        with sink.batch(self.label) as batch:
            batch.merge(self.dead, copy_payload(dead.column(LINE)))
            batch.merge(self.outbox, copy_payload(lines("outbox").column(LINE)))
            # Last: a pipeline's raw merge may update shared summary rows, whose locks are then
            # held only until the commit right after it.
            raw_new, late = self.merge_raw(batch, raw)
        es_created = es_present = 0
        if self.es_enabled:
            result = ElasticsearchSink(es_client(self.settings)).write(self.label, lines("es").column(LINE))
            es_created, es_present = result.created, result.already_present
        yield pa.RecordBatch.from_pylist(
            [
                {
                    "rows": raw.num_rows + dead.num_rows,
                    "valid": raw.num_rows,
                    "dead": dead.num_rows,
                    "raw_new": raw_new,
                    "es_created": es_created,
                    "es_present": es_present,
                    "violations": json.dumps(value_counts(dead.column(VIOLATIONS))),
                    "late": late,
                    "max_event_us": _max_event_us(raw.column(EVENT_TS)),
                    "touched": json.dumps(self._touched(raw.column(EVENT_TS))),
                }
            ],
            schema=RESULT_SCHEMA,
        )

    def _touched(self, event_ts: pa.ChunkedArray) -> list[int]:
        if self.touched_window_s is None or len(event_ts) == 0:
            return []
        seconds = pc.divide(pc.cast(pc.cast(event_ts, pa.timestamp("us")), pa.int64()), 1_000_000)
        starts = pc.multiply(pc.divide(seconds, self.touched_window_s), self.touched_window_s)
        return sorted(int(s) for s in pc.unique(starts).to_pylist() if s is not None)


def _max_event_us(event_ts: pa.ChunkedArray) -> int | None:
    if len(event_ts) == 0:
        return None
    newest = pc.max(pc.cast(pc.cast(event_ts, pa.timestamp("us")), pa.int64())).as_py()
    return None if newest is None else int(newest)


def value_counts(lists: pa.ChunkedArray) -> dict[str, int]:
    """How often each rule name occurs in a column of rule-name lists."""
    if len(lists) == lists.null_count:
        return {}
    return {str(item["values"]): int(item["counts"]) for item in pc.value_counts(pc.list_flatten(lists)).to_pylist()}


def merge_results(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-partition summaries of a batch, added up (violation counts per rule too)."""
    counted = [name for name in RESULT_SCHEMA.names if name not in (VIOLATIONS, "max_event_us", "touched")]
    total: dict[str, Any] = {name: sum(int(r[name]) for r in rows) for name in counted}
    violations: dict[str, int] = {}
    for row in rows:
        for rule, n in json.loads(row[VIOLATIONS]).items():
            violations[rule] = violations.get(rule, 0) + n
    total[VIOLATIONS] = violations
    newest = [int(r["max_event_us"]) for r in rows if r["max_event_us"] is not None]
    total["max_event_us"] = max(newest) if newest else None
    total["touched"] = sorted({int(s) for r in rows for s in json.loads(r["touched"])})
    return total
