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

Once per batch, after every partition committed, the driver closes the 1-minute windows the
watermark passed (`close_windows_statement`): each is summed from its twelve 5 s buckets, upserted
into the summary and handed on for anomaly scoring. A 1-minute window is thus exactly the sum of
the 5 s windows the summary shows for it. Buckets are deleted once every window over them closed
in an *earlier* batch, so a replay of a batch finds the buckets its first attempt summed.

Rows are updated in key order (bucket, user), so partitions writing at once wait for each other
instead of deadlocking.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import pyarrow as pa
from psycopg import sql

from spark_jobs.sinks.copy_lines import copy_payload
from spark_jobs.sinks.partition_writer import LINE, RawBatchWrite
from spark_jobs.sinks.postgres import PostgresBatch, epoch_window_start


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
    added = sql.SQL(", ").join(
        sql.SQL("b.action_counts[{i}] + EXCLUDED.action_counts[{i}]").format(i=sql.Literal(i))
        for i in range(1, len(actions) + 1)
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
), buckets AS (
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
)
SELECT (SELECT count(*) FROM new),
       (SELECT count(*) FROM new) - (SELECT coalesce(sum(event_count), 0) FROM grouped),
       (SELECT count(*) FROM summary)
"""
    ).format(
        raw=sql.Identifier(raw_table),
        raw_columns=sql.SQL(", ").join(map(sql.Identifier, raw_columns)),
        stage=sql.Identifier(stage),
        buckets=sql.Identifier(buckets_table),
        summary=sql.Identifier(summary_table),
        bucket=epoch_window_start("event_ts"),
        per_action=per_action,
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


@dataclass(frozen=True)
class UserEventsBatchWrite(RawBatchWrite):
    """A `RawBatchWrite` whose raw merge also adds the new events to the 5 s buckets and windows."""

    buckets_table: str = "user_activity_buckets"
    summary_table: str = "user_activity_summary"
    actions: tuple[str, ...] = ()
    bucket_seconds: int = 5
    watermark: datetime | None = None

    def merge_raw(self, batch: PostgresBatch, raw: pa.Table) -> tuple[int, int]:
        stage = batch.stage(self.raw, copy_payload(raw.column(LINE)))
        new, late, _windows = batch.query_one(
            merge_statement(
                self.raw.table, self.raw.columns, stage, self.buckets_table, self.summary_table, self.actions
            ),
            {"watermark": self.watermark, "seconds": self.bucket_seconds},
            self.raw.table,
        )
        return int(new), int(late)
