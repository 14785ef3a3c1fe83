"""How a user_events batch lands in one pass: raw events, 5 s activity, closed 1-minute windows.

Per Spark partition, in that partition's transaction (`merge_statement`):

1. the staged events are inserted into the raw table by source position (`ON CONFLICT DO
   NOTHING ... RETURNING`), so only events new to the table flow on and a replayed batch adds
   nothing twice;
2. the new events whose 5 s window is still open (window end after the watermark) are grouped
   per (5 s bucket, user) and added to `user_activity_buckets`: count, product set, per-action
   counts, first and last event time;
3. each bucket row it changed is written, as it now stands, to the summary as that user's 5 s
   window (Spark's "update" output mode: a row is upserted while its window changes).

After a batch's partitions committed, the driver closes the 1-minute windows the watermark passed
(`close_windows_statement`), in the background while the next batch writes: each is summed from
its twelve 5 s buckets, upserted into the summary and handed on for anomaly scoring. A 1-minute
window is thus exactly the sum of the 5 s windows the summary shows for it. Its buckets are behind
the 5 s watermark too, so no later event changes them. Buckets are deleted once every window over
them was closed by an *earlier* close, so closing a range again finds the buckets it summed.

Rows are updated in key order (bucket, user), so partitions writing at once wait for each other
instead of deadlocking.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from spark_jobs.sinks.arrow_lines import array_literal, bulk_payload, csv_payload, dead_letter_payloads, iso_millis
from spark_jobs.sinks.elasticsearch import ElasticsearchSink
from spark_jobs.sinks.partition_writer import RESULT_SCHEMA, value_counts
from spark_jobs.sinks.postgres import MergeTarget, PostgresBatch, PostgresSink, epoch_window_start
from spark_jobs.streaming_job import DLQ_PAYLOAD_BYTES
from spark_jobs.user_events.parse import PARSED_SCHEMA, UserEventParser
from spark_jobs.user_events.writers import ES_EVENT_FIELDS
from tributary.catalog import Index
from tributary.clients import es_client
from tributary.settings import Settings

# What the writer stages for `fold_buckets_statement`: the bucket table's columns.
BUCKET_COLUMNS = (
    "bucket_start",
    "user_id",
    "event_count",
    "products",
    "action_counts",
    "first_event_ts",
    "last_event_ts",
)
_TS = pa.timestamp("us", tz="UTC")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def _counts_object(actions: tuple[str, ...], count: str) -> sql.Composed:
    """The summary's `action_counts` object from per-action counts (`count` formatted with the
    action's 1-based position); actions without events are left out, as Spark's windows do."""
    pairs = sql.SQL(", ").join(
        sql.SQL("{a}, nullif({n}, 0)").format(a=sql.Literal(a), n=sql.SQL(count.format(i=i)))
        for i, a in enumerate(actions, start=1)
    )
    return sql.SQL("jsonb_strip_nulls(jsonb_build_object({}))").format(pairs)


def merge_statement(
    raw_table: str,
    raw_columns: tuple[str, ...],
    stage: str,
    buckets_table: str,
    summary_table: str,
    actions: tuple[str, ...],
) -> sql.Composed:
    """Steps 1-3; parameters `watermark` (timestamptz or None) and `seconds` (the bucket width).

    Returns one row: (events new to the raw table, of those behind the watermark, 5 s rows written).
    """
    per_action = sql.SQL(", ").join(
        sql.SQL("count(*) FILTER (WHERE action = {a})").format(a=sql.Literal(a)) for a in actions
    )
    return sql.SQL(
        """
WITH new AS (
    INSERT INTO {raw} ({raw_columns}) SELECT {raw_columns} FROM {stage}
    ON CONFLICT DO NOTHING
    RETURNING event_ts, user_id, product_id, action
), grouped AS (
    SELECT {bucket} AS bucket_start, user_id, count(*) AS event_count,
           array_agg(DISTINCT product_id) AS products, ARRAY[{per_action}]::bigint[] AS action_counts,
           min(event_ts) AS first_event_ts, max(event_ts) AS last_event_ts
    FROM new
    WHERE %(watermark)s::timestamptz IS NULL
       OR {bucket} + make_interval(secs => %(seconds)s) > %(watermark)s::timestamptz
    GROUP BY 1, 2
), {fold}
SELECT (SELECT count(*) FROM new),
       (SELECT count(*) FROM new) - (SELECT coalesce(sum(event_count), 0) FROM grouped),
       (SELECT count(*) FROM summary)
"""
    ).format(
        raw=sql.Identifier(raw_table),
        raw_columns=sql.SQL(", ").join(map(sql.Identifier, raw_columns)),
        stage=sql.Identifier(stage),
        bucket=epoch_window_start("event_ts"),
        per_action=per_action,
        fold=_fold_grouped(buckets_table, summary_table, actions),
    )


def fold_buckets_statement(
    stage: str, buckets_table: str, summary_table: str, actions: tuple[str, ...]
) -> sql.Composed:
    """Steps 2-3 for buckets grouped by the writer (`BUCKET_COLUMNS` staged in `stage`).

    The fast path: when a partition's events were all new to the raw table (a plain COPY
    succeeded), the writer groups them itself and only the bucket rows reach PostgreSQL.
    Parameter `seconds` (the bucket width); returns one row: the 5 s rows written.
    """
    return sql.SQL(
        """
WITH grouped AS (
    SELECT {columns} FROM {stage}
), {fold}
SELECT count(*) FROM summary
"""
    ).format(
        columns=sql.SQL(", ").join(map(sql.Identifier, BUCKET_COLUMNS)),
        stage=sql.Identifier(stage),
        fold=_fold_grouped(buckets_table, summary_table, actions),
    )


def _fold_grouped(buckets_table: str, summary_table: str, actions: tuple[str, ...]) -> sql.Composed:
    """CTEs `buckets` and `summary`: add the `grouped` rows to the buckets, upsert their 5 s rows."""
    added = sql.SQL(", ").join(
        sql.SQL("b.action_counts[{i}] + EXCLUDED.action_counts[{i}]").format(i=sql.Literal(i))
        for i in range(1, len(actions) + 1)
    )
    return sql.SQL(
        """buckets AS (
    INSERT INTO {buckets} AS b
        (bucket_start, user_id, event_count, products, action_counts, first_event_ts, last_event_ts)
    SELECT * FROM grouped ORDER BY bucket_start, user_id
    ON CONFLICT (bucket_start, user_id) DO UPDATE SET
        event_count = b.event_count + EXCLUDED.event_count,
        products = ARRAY(SELECT DISTINCT p FROM unnest(b.products || EXCLUDED.products) AS p ORDER BY p),
        action_counts = ARRAY[{added}]::bigint[],
        first_event_ts = least(b.first_event_ts, EXCLUDED.first_event_ts),
        last_event_ts = greatest(b.last_event_ts, EXCLUDED.last_event_ts)
    RETURNING bucket_start, user_id, event_count, cardinality(products) AS distinct_products,
              {counts} AS action_counts, first_event_ts, last_event_ts
), summary AS (
    INSERT INTO {summary} AS s (user_id, window_start, window_seconds, event_count, distinct_products,
                                action_counts, first_event_ts, last_event_ts)
    SELECT user_id, bucket_start, %(seconds)s, event_count, distinct_products, action_counts,
           first_event_ts, last_event_ts
    FROM buckets ORDER BY user_id, bucket_start
    ON CONFLICT (user_id, window_start, window_seconds) DO UPDATE SET
        event_count = EXCLUDED.event_count, distinct_products = EXCLUDED.distinct_products,
        action_counts = EXCLUDED.action_counts, first_event_ts = EXCLUDED.first_event_ts,
        last_event_ts = EXCLUDED.last_event_ts, updated_at = now()
    RETURNING 1
)"""
    ).format(
        buckets=sql.Identifier(buckets_table),
        summary=sql.Identifier(summary_table),
        added=added,
        counts=_counts_object(actions, "action_counts[{i}]"),
    )


def close_windows_statement(buckets_table: str, summary_table: str, actions: tuple[str, ...]) -> sql.Composed:
    """Upserts the sliding windows closed by the watermark moving to `%(through)s`; returns their rows.

    Parameters: `seconds` (window length), `slide` (its step, the bucket width), `after` (the
    watermark before this batch, None for the first one) and `through`. A window closes when its
    end is in (after, through]. Rows returned: (user_id, window_start, window_seconds, event_count).
    """
    sums = sql.SQL(", ").join(
        sql.SQL("sum(b.action_counts[{i}]) AS {n}").format(i=sql.Literal(i), n=sql.Identifier(f"_n{i}"))
        for i in range(1, len(actions) + 1)
    )
    return sql.SQL(
        """
WITH closing AS (
    SELECT ws FROM generate_series(
        CASE WHEN %(after)s::timestamptz IS NULL
             THEN (SELECT min(bucket_start) FROM {buckets}) - make_interval(secs => %(seconds)s - %(slide)s)
             ELSE date_bin(make_interval(secs => %(slide)s), %(after)s::timestamptz - make_interval(secs => %(seconds)s),
                           {epoch}) + make_interval(secs => %(slide)s)
        END,
        date_bin(make_interval(secs => %(slide)s), %(through)s::timestamptz - make_interval(secs => %(seconds)s), {epoch}),
        make_interval(secs => %(slide)s)) AS ws
), windows AS (
    SELECT c.ws, b.user_id, sum(b.event_count) AS event_count,
           (SELECT count(DISTINCT p) FROM unnest(array_concat_agg(b.products)) AS p) AS distinct_products,
           {sums}, min(b.first_event_ts) AS first_event_ts, max(b.last_event_ts) AS last_event_ts
    FROM closing c
    JOIN {buckets} b ON b.bucket_start >= c.ws AND b.bucket_start < c.ws + make_interval(secs => %(seconds)s)
    GROUP BY c.ws, b.user_id
)
INSERT INTO {summary} (user_id, window_start, window_seconds, event_count, distinct_products, action_counts,
                       first_event_ts, last_event_ts)
SELECT user_id, ws, %(seconds)s, event_count, distinct_products, {counts}, first_event_ts, last_event_ts
FROM windows ORDER BY user_id, ws
ON CONFLICT (user_id, window_start, window_seconds) DO UPDATE SET
    event_count = EXCLUDED.event_count, distinct_products = EXCLUDED.distinct_products,
    action_counts = EXCLUDED.action_counts, first_event_ts = EXCLUDED.first_event_ts,
    last_event_ts = EXCLUDED.last_event_ts, updated_at = now()
RETURNING user_id, window_start, window_seconds, event_count
"""
    ).format(
        buckets=sql.Identifier(buckets_table),
        summary=sql.Identifier(summary_table),
        epoch=sql.SQL("'1970-01-01 00:00:00+00'::timestamptz"),
        sums=sums,
        counts=_counts_object(actions, "_n{i}"),
    )


def prune_buckets_statement(buckets_table: str) -> sql.Composed:
    """Deletes buckets whose every window closed by `%(after)s` (an earlier batch's watermark)."""
    return sql.SQL(
        "DELETE FROM {buckets} WHERE bucket_start + make_interval(secs => %(seconds)s) <= %(after)s::timestamptz"
    ).format(buckets=sql.Identifier(buckets_table))


def closes_a_window(after: datetime | None, through: datetime | None, seconds: int, slide: int) -> bool:
    """Whether moving the watermark from `after` to `through` passes the end of some window."""
    if through is None:
        return False
    if after is None:
        return True

    def last_closed_start(watermark: datetime) -> int:
        return int((watermark - timedelta(seconds=seconds)).timestamp()) // slide

    return last_closed_start(through) > last_closed_start(after)


def bucket_rows(
    events: pa.Table, actions: tuple[str, ...], seconds: int, watermark: datetime | None
) -> tuple[pa.Table, int]:
    """Valid events grouped per (bucket, user) exactly as `merge_statement` groups them.

    Returns (`BUCKET_COLUMNS` rows ready for COPY, events left out as late). A bucket is the
    epoch-aligned `seconds` window of the event; events whose bucket ended by the watermark are
    late (kept in the raw table, left out of the windows).
    """
    if events.num_rows == 0:
        return pa.table({name: pa.array([], pa.string()) for name in BUCKET_COLUMNS}), 0
    event_us = np.asarray(pc.cast(events.column("event_ts"), pa.int64()))
    width = seconds * 1_000_000
    start = (event_us // width) * width  # floor division: pre-1970 events land as date_bin puts them
    keep = np.ones(len(event_us), dtype=bool)
    if watermark is not None:
        keep = start + width > (watermark - _EPOCH) // _ONE_US
    late = int(len(keep) - np.count_nonzero(keep))
    action = events.column("action")
    per_action = {f"_n{i}": pc.cast(pc.equal(action, a), pa.int64()) for i, a in enumerate(actions)}
    table = pa.table(
        {
            "bucket_start": start,
            "user_id": events.column("user_id"),
            "product_id": events.column("product_id"),
            "event_us": event_us,
            **per_action,
        }
    ).filter(pa.array(keep))
    grouped = table.group_by(["bucket_start", "user_id"], use_threads=False).aggregate(
        [
            ("event_us", "count"),
            ("product_id", "distinct"),
            ("event_us", "min"),
            ("event_us", "max"),
            *((name, "sum") for name in per_action),
        ]
    )
    counts = pc.binary_join_element_wise(*(pc.cast(grouped[f"{name}_sum"], pa.string()) for name in per_action), ",")
    return (
        pa.table(
            {
                "bucket_start": pc.cast(grouped["bucket_start"], _TS),
                "user_id": grouped["user_id"],
                "event_count": grouped["event_us_count"],
                "products": array_literal(grouped["product_id_distinct"]),
                "action_counts": pc.binary_join_element_wise("{", counts, "}", ""),
                "first_event_ts": pc.cast(grouped["event_us_min"], _TS),
                "last_event_ts": pc.cast(grouped["event_us_max"], _TS),
            }
        ),
        late,
    )


# One connection per Python worker and database: workers are reused across tasks and batches.
_SINKS: dict[str, PostgresSink] = {}


def _sink(pg_url: str) -> PostgresSink:
    if pg_url not in _SINKS:
        _SINKS[pg_url] = PostgresSink(pg_url, application_name="tributary-user-events-writer")
    return _SINKS[pg_url]


@dataclass(frozen=True)
class UserEventsPartitionWrite:
    """Parses, validates and writes one Spark partition (one Kafka offset range); pickled to workers.

    Input: the Kafka source's record batches. In one PostgreSQL transaction: dead letters and
    their outbox messages, the raw events, and the new events added to the 5 s buckets and rows.
    The raw events are COPYed straight into the table, and the writer groups them into buckets
    itself; if any of them is already stored (a replayed range), that COPY is undone and the
    staged merge (`merge_statement`) adds only the events new to the table. Yields one
    `RESULT_SCHEMA` row.
    """

    settings: Settings
    label: str
    parser: UserEventParser
    raw: MergeTarget
    dead: MergeTarget
    outbox: MergeTarget
    pipeline_name: str
    dead_letter_topic: str
    # The events index, or None with Elasticsearch off.
    events_index: Index | None
    buckets_table: str
    summary_table: str
    actions: tuple[str, ...]
    bucket_seconds: int
    watermark: datetime | None

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        parsed = pa.Table.from_batches([self.parser.parse(b) for b in batches], schema=PARSED_SCHEMA)
        if parsed.num_rows == 0:
            return
        valid = pc.equal(pc.list_value_length(parsed.column("violations")), 0)
        raw, invalid = parsed.filter(valid), parsed.filter(pc.invert(valid))
        dead_lines, outbox_lines = dead_letter_payloads(
            invalid,
            pipeline=self.pipeline_name,
            dead_letter_topic=self.dead_letter_topic,
            dlq_payload_bytes=DLQ_PAYLOAD_BYTES,
        )
        sink = _sink(self.settings.pg_url)
        sink.ensure_day_partitions(self.raw.table, pc.unique(pc.cast(raw.column("event_ts"), pa.date32())).to_pylist())
        with sink.batch(self.label) as batch:
            batch.merge(self.dead, [dead_lines])
            batch.merge(self.outbox, [outbox_lines])
            # Last: the bucket and 5 s row locks are then held only until the commit right after.
            raw_new, late = self._merge_raw(batch, raw)
        es_created = es_present = 0
        if self.events_index is not None and raw.num_rows:
            result = ElasticsearchSink(es_client(self.settings)).write(self.label, self._documents(raw))
            es_created, es_present = result.created, result.already_present
        event_us = pc.cast(raw.column("event_ts"), pa.int64())
        newest = pc.max(event_us).as_py() if raw.num_rows else None
        yield pa.RecordBatch.from_pylist(
            [
                {
                    "rows": parsed.num_rows,
                    "valid": raw.num_rows,
                    "dead": invalid.num_rows,
                    "raw_new": raw_new,
                    "es_created": es_created,
                    "es_present": es_present,
                    "violations": json.dumps(value_counts(invalid.column("violations"))),
                    "late": late,
                    "max_event_us": newest,
                    "touched": "[]",
                }
            ],
            schema=RESULT_SCHEMA,
        )

    def _merge_raw(self, batch: PostgresBatch, raw: pa.Table) -> tuple[int, int]:
        """Raw events and their buckets; returns (events new to the raw table, of those late)."""
        if raw.num_rows == 0:
            return 0, 0
        lines = csv_payload(raw, self.raw.columns)
        copied = batch.copy_new(self.raw, [lines])
        if copied is None:
            stage = batch.stage(self.raw, [lines])
            new, late, _rows = batch.query_one(
                merge_statement(
                    self.raw.table, self.raw.columns, stage, self.buckets_table, self.summary_table, self.actions
                ),
                {"watermark": self.watermark, "seconds": self.bucket_seconds},
                self.raw.table,
            )
            return int(new), int(late)
        grouped, late = bucket_rows(raw, self.actions, self.bucket_seconds, self.watermark)
        if grouped.num_rows:
            target = MergeTarget(self.buckets_table, BUCKET_COLUMNS, key=("bucket_start", "user_id"))
            stage = batch.stage(target, [csv_payload(grouped, BUCKET_COLUMNS)])
            batch.query_one(
                fold_buckets_statement(stage, self.buckets_table, self.summary_table, self.actions),
                {"seconds": self.bucket_seconds},
                self.buckets_table,
            )
        return copied, late

    def _documents(self, raw: pa.Table) -> pa.ChunkedArray:
        """Bulk `create` lines of the valid events, id = source position (as `event_document`)."""
        assert self.events_index is not None
        ids = [
            f"{t}-{p}-{o}"
            for t, p, o in zip(
                raw.column("topic").to_pylist(),
                raw.column("kafka_partition").to_pylist(),
                raw.column("kafka_offset").to_pylist(),
                strict=True,
            )
        ]
        ingested = iso_millis((datetime.now(UTC) - _EPOCH) // _ONE_US)
        lines = bulk_payload(
            raw,
            self.events_index,
            ids,
            pc.cast(raw.column("event_ts"), pa.int64()).to_pylist(),
            ES_EVENT_FIELDS,
            {"ingested_at": ingested},
        )
        return pa.chunked_array([pa.array(lines, pa.binary()).cast(pa.string())])
