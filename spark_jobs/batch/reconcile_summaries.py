"""raw <-> summaries: windows recomputed from raw versus the summary table, window by window.

For each of the pipeline's windows (user_events: 5 s tumbling, 1 min sliding by 5 s), the windows
that *start* within the checked hour are recomputed with the streaming job's own transformation
(`spark_jobs.user_events.transforms.activity_windows`) from the raw rows with event time in
[hour start, hour end + window length) (a window starting at the end of the hour still collects
events after it), and compared with the stored rows of those windows (JDBC read), joined on
(user_id, window_start, window_seconds). Compared: event_count, distinct_products, action_counts
(as sorted entries), first_event_ts and last_event_ts. A window is *missing* (recomputed, not
stored), *surplus* (stored, no raw events) or *differs* (with the fields that differ).

Limitation, by design: the streaming job drops events that arrive after a window's watermark
(they are kept in raw, not counted), and its 1-minute windows are only emitted once the watermark
passes them, i.e. once later events arrive. A recomputation from raw counts every event, so a
window that received late events, or that the stream has not closed yet, is reported as differing;
the backfill this triggers folds the late events in, which is the intended repair. Reconciling only
closed hours (catalog `batch.reconcile_delay_hours` plus the watermark) keeps the second case to
topics that went quiet.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_jobs.batch.raw_reader import read_raw_range
from spark_jobs.user_events import transforms as T
from tributary.catalog import Pipeline, Window
from tributary.clients import jdbc_url
from tributary.reconciliation import LISTED, RAW_SUMMARIES, BackfillRange, CheckResult
from tributary.settings import Settings

KEY = ("user_id", "window_start", "window_seconds")
COMPARED = ("event_count", "distinct_products", "action_counts", "first_event_ts", "last_event_ts")
RAW_COLUMNS = ("event_ts", "user_id", "product_id", "action")
ACTION_COUNTS_TYPE = "map<string,bigint>"


def recomputed_windows(
    events: DataFrame, window: Window, actions: tuple[str, ...], start: datetime, end: datetime
) -> DataFrame:
    """`activity_windows` of raw `events`, only windows starting in [start, end), comparable form."""
    windows = T.activity_windows(events, window, actions)
    in_range = (F.col("window_start") >= F.lit(start)) & (F.col("window_start") < F.lit(end))
    return _comparable(windows.where(in_range))


def stored_windows(
    spark: SparkSession, settings: Settings, table: str, window: Window, start: datetime, end: datetime
) -> DataFrame:
    """Summary rows of `window` starting in [start, end), in the same form as `recomputed_windows`."""
    url, properties = jdbc_url(settings.pg_url)
    predicate = (
        f"window_seconds = {int(window.duration_s)} AND window_start >= '{start.isoformat()}'::timestamptz "
        f"AND window_start < '{end.isoformat()}'::timestamptz"
    )
    rows = spark.read.jdbc(url, table, predicates=[predicate], properties=properties)
    # jsonb arrives as a string; parsed back into the map the transformation produces.
    return _comparable(rows.withColumn("action_counts", F.from_json("action_counts", ACTION_COUNTS_TYPE)))


def _comparable(windows: DataFrame) -> DataFrame:
    # Maps cannot be compared in Spark; their entries sorted by action can.
    return windows.select(
        F.col("user_id").cast("bigint").alias("user_id"),
        "window_start",
        F.col("window_seconds").cast("int").alias("window_seconds"),
        F.col("event_count").cast("bigint").alias("event_count"),
        F.col("distinct_products").cast("int").alias("distinct_products"),
        F.array_sort(F.map_entries(F.col("action_counts").cast(ACTION_COUNTS_TYPE))).alias("action_counts"),
        "first_event_ts",
        "last_event_ts",
    )


def window_differences(recomputed: DataFrame, stored: DataFrame) -> DataFrame:
    """Full outer join on the window key: every window with `kind` (None when both agree),
    `differing` (names of differing fields) and each field as `recomputed_<f>` / `stored_<f>`."""
    left = recomputed.select(*KEY, *(F.col(c).alias(f"recomputed_{c}") for c in COMPARED), F.lit(True).alias("_r"))
    right = stored.select(*KEY, *(F.col(c).alias(f"stored_{c}") for c in COMPARED), F.lit(True).alias("_s"))
    joined = left.join(right, on=list(KEY), how="full_outer")
    differing = F.array_compact(
        F.array(*(F.when(~F.col(f"recomputed_{c}").eqNullSafe(F.col(f"stored_{c}")), F.lit(c)) for c in COMPARED))
    )
    kind = (
        F.when(F.col("_s").isNull(), F.lit("missing"))
        .when(F.col("_r").isNull(), F.lit("surplus"))
        .when(F.size(differing) > 0, F.lit("differs"))
    )
    return joined.select(
        *KEY,
        kind.alias("kind"),
        F.when(F.col("_r") & F.col("_s"), differing).alias("differing"),
        F.coalesce(F.col("_r"), F.lit(False)).alias("in_raw"),
        F.coalesce(F.col("_s"), F.lit(False)).alias("in_summary"),
        *(f"recomputed_{c}" for c in COMPARED),
        *(f"stored_{c}" for c in COMPARED),
    )


def check_window(
    spark: SparkSession,
    settings: Settings,
    pipeline: Pipeline,
    events: DataFrame,
    window: Window,
    start: datetime,
    end: datetime,
) -> CheckResult:
    """The raw_summaries result of one window size and hour."""
    table = pipeline.tables.summary
    if table is None:
        raise ValueError(f"pipeline {pipeline.name} has no summary table in the catalog")
    actions: tuple[str, ...] = pipeline.validation.allowed_actions  # type: ignore[union-attr]
    diff = window_differences(
        recomputed_windows(events, window, actions, start, end),
        stored_windows(spark, settings, table, window, start, end),
    ).persist()
    try:
        stats = diff.agg(
            F.count_if("in_raw").alias("recomputed"),
            F.count_if("in_summary").alias("stored"),
            F.count_if(F.col("kind") == "missing").alias("missing"),
            F.count_if(F.col("kind") == "surplus").alias("surplus"),
            F.count_if(F.col("kind") == "differs").alias("differs"),
            F.min(F.when(F.col("kind").isNotNull(), F.unix_micros("window_start"))).alias("first_start"),
            F.max(F.when(F.col("kind").isNotNull(), F.unix_micros("window_start"))).alias("last_start"),
        ).first()
        assert stats is not None
        listed = [_listed_window(row.asDict()) for row in _listing(diff).collect()]
    finally:
        diff.unpersist()
    recomputed, stored = int(stats["recomputed"]), int(stats["stored"])
    counts = {kind: int(stats[kind]) for kind in ("missing", "surplus", "differs")}
    bad = sum(counts.values())
    detail: dict[str, Any] = {"window": window.name, "table": table, **counts, "windows": listed}
    if not bad:
        return CheckResult(
            RAW_SUMMARIES, window.name, "ok", f"{recomputed} windows, all as stored", recomputed, stored, detail
        )
    first = _from_micros(stats["first_start"])
    last_end = _from_micros(stats["last_start"]) + timedelta(seconds=window.duration_s)
    message = (
        f"{bad} of {max(recomputed, stored)} windows {'differs' if bad == 1 else 'differ'} "
        f"({counts['differs']} with other values, {counts['missing']} not stored, {counts['surplus']} without raw "
        f"events): " + "; ".join(_window_text(w) for w in listed[:5]) + (" ..." if bad > 5 else "")
    )
    return CheckResult(
        RAW_SUMMARIES,
        window.name,
        "mismatch",
        message,
        recomputed,
        stored,
        detail,
        BackfillRange("summaries", first, last_end),
    )


def _listing(diff: DataFrame) -> DataFrame:
    """The first LISTED differing windows, values as JSON-friendly strings and numbers."""

    def iso(column: str) -> Column:
        return F.date_format(column, "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX")

    def plain(prefix: str, c: str) -> Column:
        name = f"{prefix}_{c}"
        if c == "action_counts":
            return F.to_json(F.map_from_entries(name)).alias(name)
        if c.endswith("_ts"):
            return iso(name).alias(name)
        return F.col(name)

    return (
        diff.where(F.col("kind").isNotNull())
        .orderBy("window_start", "user_id")
        .limit(LISTED)
        .select(
            "user_id",
            iso("window_start").alias("window_start"),
            "window_seconds",
            "kind",
            "differing",
            *(plain(p, c) for p in ("recomputed", "stored") for c in COMPARED),
        )
    )


def _listed_window(row: Mapping[str, Any]) -> dict[str, Any]:
    def value(name: str) -> Any:
        v = row[name]
        return json.loads(v) if name.endswith("action_counts") and v is not None else v

    fields = row["differing"] or (COMPARED if row["kind"] != "differs" else ())
    return {
        "user_id": row["user_id"],
        "window_start": row["window_start"],
        "window_seconds": row["window_seconds"],
        "kind": row["kind"],
        "fields": {f: {"recomputed": value(f"recomputed_{f}"), "stored": value(f"stored_{f}")} for f in fields},
    }


def _window_text(window: Mapping[str, Any]) -> str:
    start = datetime.fromisoformat(window["window_start"])
    head = f"user {window['user_id']} window {start:%Y-%m-%d %H:%M:%S} ({window['window_seconds']}s)"
    if window["kind"] == "missing":
        return f"{head} not stored"
    if window["kind"] == "surplus":
        return f"{head} stored, but raw has no events for it"
    fields = ", ".join(f"{f} {v['recomputed']} recomputed, {v['stored']} stored" for f, v in window["fields"].items())
    return f"{head}: {fields}"


def _from_micros(micros: int) -> datetime:
    return datetime.fromtimestamp(0, UTC) + timedelta(microseconds=int(micros))


def check_user_event_summaries(
    spark: SparkSession, settings: Settings, pipeline: Pipeline, start: datetime, end: datetime
) -> list[CheckResult]:
    """raw_summaries results of one hour: one per window of the catalog entry."""
    longest = max(w.duration_s for w in pipeline.windows)
    events = read_raw_range(
        spark, settings, pipeline, start, end + timedelta(seconds=longest), columns=RAW_COLUMNS
    ).persist()
    try:
        return [check_window(spark, settings, pipeline, events, w, start, end) for w in pipeline.windows]
    finally:
        events.unpersist()


SummaryCheck = Callable[[SparkSession, Settings, Pipeline, datetime, datetime], list[CheckResult]]

# Pipelines whose summaries can be recomputed from raw, with the function that does it.
SUMMARY_CHECKS: Mapping[str, SummaryCheck] = {"user_events": check_user_event_summaries}


def check_summaries(
    spark: Callable[[], SparkSession], settings: Settings, pipeline: Pipeline, start: datetime, end: datetime
) -> list[CheckResult]:
    """raw_summaries results of one hour for any pipeline (skipped where no recomputation exists).

    `spark` returns the session; it is only called (and a JVM started) when there is work for it.
    """
    check = SUMMARY_CHECKS.get(pipeline.name)
    if check is None or pipeline.tables.summary is None:
        return [CheckResult(RAW_SUMMARIES, "all", "skipped", f"no recomputation of {pipeline.name} summaries yet")]
    return check(spark(), settings, pipeline, start, end)
