"""raw <-> summaries: windows recomputed from raw versus the summary table, window by window.

Each pipeline's summaries are recomputed the way its streaming job computes them:

- **user_events** (Spark): for each of the pipeline's windows (5 s tumbling, 1 min sliding by 5 s),
  the windows that *start* within the checked hour are recomputed with the streaming job's own
  transformation (`spark_jobs.user_events.transforms.activity_windows`) from the raw rows with
  event time in [hour start, hour end + window length) (a window starting at the end of the hour
  still collects events after it), and compared with the stored rows of those windows (JDBC read),
  joined on (user_id, window_start, window_seconds). Compared: event_count, distinct_products,
  action_counts (as sorted entries), first_event_ts and last_event_ts.
- **weather** (SQL, as the job's `merge.py` aggregates): the hour's windows per station and over
  all stations ('*') from the raw readings *except the late ones not folded yet*
  (`weather_late_readings.folded_at IS NULL`: the job keeps those out of the summary until a
  backfill folds them in), versus `weather_summary`. reading_count, min and max exactly; the sums
  (the averages are generated from them) with a relative tolerance of 1e-9, since float sums depend
  on the order readings are added in (batch by batch in the job, decimal in the backfill).
- **app_logs** (SQL): the job's own statement (`spark_jobs/app_logs/minute_stats.py`) run for
  every minute of the hour into a temporary copy of `app_log_minute_stats`, versus the stored
  rows, per endpoint and '*': requests, 4xx, 5xx and bytes exactly, p95 and mean latency with the
  same tolerance. app_logs has no backfill: `recompute_minute_stats` (the reconcile job's
  `--recompute-summaries`) rewrites the minutes of a range from raw.

A window is *missing* (recomputed, not stored), *surplus* (stored, nothing in raw for it) or
*differs* (with the fields that differ). The SQL checks read raw and summary in one snapshot.

Limitation of user_events, by design: the streaming job drops events that arrive after a window's
watermark (they are kept in raw, not counted), and its 1-minute windows are only emitted once the
watermark passes them, i.e. once later events arrive. A recomputation from raw counts every event,
so a window that received late events, or that the stream has not closed yet, is reported as
differing; the backfill this triggers folds the late events in, which is the intended repair.
Reconciling only closed hours (catalog `batch.reconcile_delay_hours` plus the watermark) keeps the
second case to topics that went quiet. (weather keeps late readings apart in a table, so they are
left out instead; app_logs recomputes a minute whenever a line of it lands.)
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import psycopg
from psycopg import sql
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_jobs.app_logs.minute_stats import ALL as ALL_REQUESTS
from spark_jobs.app_logs.minute_stats import minute_stats_statement
from spark_jobs.batch.raw_reader import read_raw_range
from spark_jobs.user_events import transforms as T
from spark_jobs.weather.transforms import ALL_STATIONS, MEASURES
from tributary.catalog import Pipeline, Window
from tributary.clients import jdbc_url, pg_connect
from tributary.reconciliation import BACKFILL_TARGETS, LISTED, RAW_SUMMARIES, BackfillRange, CheckResult
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
    backfill_targets: Collection[str] = BACKFILL_TARGETS,
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
    repair = BackfillRange("summaries", first, last_end)
    return CheckResult(
        RAW_SUMMARIES,
        window.name,
        "mismatch",
        message,
        recomputed,
        stored,
        detail,
        repair if "summaries" in backfill_targets else None,
        None if "summaries" in backfill_targets else _no_backfill_fix(pipeline, start, end),
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
    spark: SparkSession,
    settings: Settings,
    pipeline: Pipeline,
    start: datetime,
    end: datetime,
    backfill_targets: Collection[str] = BACKFILL_TARGETS,
) -> list[CheckResult]:
    """raw_summaries results of one hour: one per window of the catalog entry."""
    longest = max(w.duration_s for w in pipeline.windows)
    events = read_raw_range(
        spark, settings, pipeline, start, end + timedelta(seconds=longest), columns=RAW_COLUMNS
    ).persist()
    try:
        return [
            check_window(spark, settings, pipeline, events, w, start, end, backfill_targets) for w in pipeline.windows
        ]
    finally:
        events.unpersist()


# ------------------------------------------------------------------ summaries recomputed in SQL

# Floats recomputed in another order (sums, means, interpolated percentiles) agree within this
# share of their magnitude (at least 1), as the weather backfill compares them.
REL_TOLERANCE = 1e-9
# Windows are aligned to the epoch in UTC, as the jobs' date_bin() and Spark's window() align them.
_ORIGIN = datetime(1970, 1, 1, tzinfo=UTC)

Key = tuple[Any, ...]
Row = Mapping[str, Any]
DifferenceKind = Literal["missing", "surplus", "differs"]


@dataclass(frozen=True)
class RowDifference:
    """A summary row recomputed from raw that is not stored as such; `fields`: name ->
    (recomputed, stored), every compared field for a missing or surplus row."""

    key: Key
    kind: DifferenceKind
    fields: Mapping[str, tuple[Any, Any]]


def values_agree(recomputed: Any, stored: Any, rel_tolerance: float | None) -> bool:
    """Equal, or (with a tolerance) both numbers within `rel_tolerance` of the larger magnitude (at least 1)."""
    if recomputed is None or stored is None or rel_tolerance is None:
        return bool(recomputed == stored)
    a, b = float(recomputed), float(stored)
    return math.isclose(a, b, rel_tol=0.0, abs_tol=rel_tolerance * max(abs(a), abs(b), 1.0))


def row_differences(
    recomputed: Mapping[Key, Row],
    stored: Mapping[Key, Row],
    exact: Sequence[str],
    approx: Sequence[str] = (),
    rel_tolerance: float = REL_TOLERANCE,
) -> list[RowDifference]:
    """Rows keyed alike compared field by field (`exact` ones exactly, `approx` ones within the
    tolerance), sorted by key: missing, surplus and differing rows."""
    compared = [*exact, *approx]
    differences = []
    for key in sorted(recomputed.keys() | stored.keys()):
        left, right = recomputed.get(key), stored.get(key)
        if left is None or right is None:
            kind: DifferenceKind = "missing" if right is None else "surplus"
            fields = {f: (None if left is None else left[f], None if right is None else right[f]) for f in compared}
            differences.append(RowDifference(key, kind, fields))
            continue
        differing = {
            f: (left[f], right[f])
            for f in compared
            if not values_agree(left[f], right[f], rel_tolerance if f in approx else None)
        }
        if differing:
            differences.append(RowDifference(key, "differs", differing))
    return differences


@dataclass(frozen=True)
class SqlSummary:
    """How one pipeline's summary table is recomputed in SQL and compared."""

    table: str
    key: tuple[str, ...]  # the window start first
    exact: tuple[str, ...]
    approx: tuple[str, ...]
    tolerance_note: str
    describe: Callable[[Key], str]  # a key as a person reads it

    def listed(self, difference: RowDifference, window: Window) -> dict[str, Any]:
        """A JSON-friendly entry of the result's `windows`."""
        key = {name: _plain(value) for name, value in zip(self.key, difference.key, strict=True)}
        return {
            **key,
            "window_seconds": window.duration_s,
            "kind": difference.kind,
            "fields": {f: {"recomputed": _plain(r), "stored": _plain(s)} for f, (r, s) in difference.fields.items()},
        }

    def text(self, difference: RowDifference) -> str:
        head = self.describe(difference.key)
        if difference.kind == "missing":
            return f"{head} not stored"
        if difference.kind == "surplus":
            return f"{head} stored, but raw has nothing for it"
        fields = ", ".join(
            f"{f} {_number(r)} recomputed, {_number(s)} stored" for f, (r, s) in difference.fields.items()
        )
        return f"{head}: {fields}"


def _number(value: Any) -> str:
    # 12 significant digits: float noise (21759.700000000037) hidden, a difference past the
    # tolerance of 1e-9 still visible. The detail keeps the exact values.
    return f"{value:.12g}" if isinstance(value, float) else str(value)


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _hour_window(pipeline: Pipeline) -> Window:
    """The pipeline's one tumbling window, which must tile an hour (so an hour's windows lie in it)."""
    (window,) = pipeline.windows
    if window.slide_s is not None or 3600 % window.duration_s:
        raise ValueError(
            f"{pipeline.name}: window {window.name} does not tile an hour; the SQL recomputation checks the "
            "windows of one hour from that hour's raw rows"
        )
    return window


def _sides(
    rows: Sequence[Sequence[Any]], key_width: int, fields: Sequence[str]
) -> tuple[dict[Key, Row], dict[Key, Row]]:
    """Rows `(side, *key, *fields)` with side 'recomputed' or 'stored' -> two dicts by key (times in UTC)."""
    sides: dict[str, dict[Key, Row]] = {"recomputed": {}, "stored": {}}
    for side, *values in rows:
        key = tuple(v.astimezone(UTC) if isinstance(v, datetime) else v for v in values[:key_width])
        sides[side][key] = dict(zip(fields, values[key_width:], strict=True))
    return sides["recomputed"], sides["stored"]


def _read_snapshot(conn: psycopg.Connection[Any]) -> None:
    """Makes the open transaction read every table as of one moment (raw and summary agree)."""
    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")


def sql_summary_result(
    spec: SqlSummary,
    pipeline: Pipeline,
    window: Window,
    recomputed: Mapping[Key, Row],
    stored: Mapping[Key, Row],
    start: datetime,
    end: datetime,
    backfill_targets: Collection[str],
    detail: Mapping[str, Any],
    ok_note: str = "",
) -> CheckResult:
    """The raw_summaries result of one hour of a summary recomputed in SQL."""
    differences = row_differences(recomputed, stored, spec.exact, spec.approx)
    counts = {kind: sum(d.kind == kind for d in differences) for kind in ("missing", "surplus", "differs")}
    listed = [spec.listed(d, window) for d in differences[:LISTED]]
    full_detail: dict[str, Any] = {
        "window": window.name,
        "table": spec.table,
        **counts,
        "tolerance": spec.tolerance_note,
        **detail,
        "windows": listed,
    }
    n_recomputed, n_stored = len(recomputed), len(stored)
    if not differences:
        message = f"{n_recomputed} windows, all as stored" + (f"; {ok_note}" if ok_note else "")
        return CheckResult(RAW_SUMMARIES, window.name, "ok", message, n_recomputed, n_stored, full_detail)
    bad = len(differences)
    message = (
        f"{bad} of {max(n_recomputed, n_stored)} windows {'differs' if bad == 1 else 'differ'} "
        f"({counts['differs']} with other values, {counts['missing']} not stored, {counts['surplus']} without raw "
        f"rows): " + "; ".join(spec.text(d) for d in differences[:5]) + (" ..." if bad > 5 else "")
    )
    starts = [d.key[0] for d in differences]
    repair = BackfillRange("summaries", min(starts), max(starts) + timedelta(seconds=window.duration_s))
    can_backfill = "summaries" in backfill_targets
    return CheckResult(
        RAW_SUMMARIES,
        window.name,
        "mismatch",
        message,
        n_recomputed,
        n_stored,
        full_detail,
        repair if can_backfill else None,
        None if can_backfill else _no_backfill_fix(pipeline, start, end),
    )


def _no_backfill_fix(pipeline: Pipeline, start: datetime, end: datetime) -> str:
    """What to do about a summary mismatch of a pipeline whose backfill cannot redo summaries."""
    if pipeline.name in SQL_RECOMPUTES:
        return (
            f"{pipeline.name} has no backfill; recompute its {pipeline.tables.summary} of the hour from raw and check "
            f"again with: python -m spark_jobs.batch.reconcile --pipeline {pipeline.name} "
            f"--start {start:%Y-%m-%dT%H:%MZ} --end {end:%Y-%m-%dT%H:%MZ} {RECOMPUTE_FLAG}"
        )
    return (
        f"{pipeline.name} has no backfill that recomputes {pipeline.tables.summary}; recompute the differing windows "
        "from raw by hand"
    )


# --------------------------------------------------------------------------------- weather

WEATHER_EXACT = ("reading_count", *(f"{stat}_{m}" for m in MEASURES for stat in ("min", "max")))
WEATHER_APPROX = tuple(f"sum_{m}" for m in MEASURES)

_WEATHER_SIDES = """
WITH on_time AS (
    SELECT r.station_id, date_bin(make_interval(secs => %(seconds)s), r.event_ts, %(origin)s) AS window_start,
           {measures}
    FROM {raw} r
    WHERE r.event_ts >= %(start)s AND r.event_ts < %(end)s
      AND NOT EXISTS (
          SELECT 1 FROM {late} l
          WHERE (l.topic, l.kafka_partition, l.kafka_offset) = (r.topic, r.kafka_partition, r.kafka_offset)
            AND l.folded_at IS NULL)
)
SELECT 'recomputed', window_start, coalesce(station_id, {all_stations}), count(*), {aggregates}
FROM on_time GROUP BY GROUPING SETS ((window_start, station_id), (window_start))
UNION ALL
SELECT 'stored', window_start, station_id, {stored}
FROM {summary}
WHERE window_seconds = %(seconds)s AND window_start >= %(start)s AND window_start < %(end)s
"""

_WEATHER_UNFOLDED = """
SELECT count(*) FROM {late} WHERE folded_at IS NULL AND event_ts >= %(start)s AND event_ts < %(end)s
"""


def _weather_key(key: Key) -> str:
    window_start, station = key
    who = "all stations" if station == ALL_STATIONS else f"station {station}"
    return f"{who} window {window_start:%Y-%m-%d %H:%M}"


def weather_summary_spec(table: str) -> SqlSummary:
    """How `weather_summary` rows are keyed and compared."""
    return SqlSummary(
        table=table,
        key=("window_start", "station_id"),
        exact=WEATHER_EXACT,
        approx=WEATHER_APPROX,
        tolerance_note=(
            f"reading_count, min_* and max_* compared exactly; sum_* within a relative tolerance of {REL_TOLERANCE:g} "
            "(float sums depend on the order readings are added in); avg_* are generated from the sums"
        ),
        describe=_weather_key,
    )


def check_weather_summaries(
    conn: psycopg.Connection[Any],
    pipeline: Pipeline,
    start: datetime,
    end: datetime,
    backfill_targets: Collection[str] = BACKFILL_TARGETS,
) -> list[CheckResult]:
    """The raw_summaries result of one hour of weather: per station and '*', on-time readings only."""
    window = _hour_window(pipeline)
    summary, late = pipeline.tables.summary, pipeline.tables.late
    if summary is None or late is None:
        raise ValueError(f"pipeline {pipeline.name} lacks the summary or the late-readings table in the catalog")
    stats = [f"{stat}({m})" for m in MEASURES for stat in ("sum", "min", "max")]
    fields = ["reading_count", *(f"{stat}_{m}" for m in MEASURES for stat in ("sum", "min", "max"))]
    query = sql.SQL(_WEATHER_SIDES).format(
        raw=sql.Identifier(pipeline.tables.raw),
        late=sql.Identifier(late),
        summary=sql.Identifier(summary),
        measures=sql.SQL(", ").join(sql.SQL("r.{}").format(sql.Identifier(m)) for m in MEASURES),
        aggregates=sql.SQL(", ").join(sql.SQL(s) for s in stats),
        stored=sql.SQL(", ").join(map(sql.Identifier, fields)),
        all_stations=sql.Literal(ALL_STATIONS),
    )
    params = {"start": start, "end": end, "seconds": window.duration_s, "origin": _ORIGIN}
    with conn.transaction():
        _read_snapshot(conn)
        rows = conn.execute(query, params).fetchall()
        unfolded_row = conn.execute(sql.SQL(_WEATHER_UNFOLDED).format(late=sql.Identifier(late)), params).fetchone()
    unfolded = int(unfolded_row[0]) if unfolded_row else 0
    recomputed, stored = _sides(rows, 2, fields)
    spec = weather_summary_spec(summary)
    note = (
        f"{unfolded} late readings not folded yet are left out, as the job leaves them out (a weather backfill "
        "of the hour folds them in)"
        if unfolded
        else ""
    )
    result = sql_summary_result(
        spec, pipeline, window, recomputed, stored, start, end, backfill_targets, {"unfolded_late": unfolded}, note
    )
    return [result]


# -------------------------------------------------------------------------------- app_logs

APP_LOG_EXACT = ("requests", "errors_4xx", "errors_5xx", "bytes")
APP_LOG_APPROX = ("p95_latency_ms", "avg_latency_ms")
# A temporary copy of the minute-stats table that the job's own statement fills.
_RECOMPUTED_STATS = "_reconcile_minute_stats"

_APP_LOG_SIDES = """
SELECT 'recomputed', minute_start, method, path_template, {fields} FROM {recomputed}
UNION ALL
SELECT 'stored', minute_start, method, path_template, {fields} FROM {stats}
WHERE minute_start >= %(start)s AND minute_start < %(end)s
"""


def _minute_params(window: Window, start: datetime, end: datetime) -> dict[str, Any]:
    """`minute_stats_statement`'s parameters for every window of [start, end)."""
    step = timedelta(seconds=window.duration_s)
    minutes = [start + i * step for i in range(int((end - start) / step))]
    return {"seconds": window.duration_s, "minutes": minutes, "low": start, "high": end}


def _app_log_key(key: Key) -> str:
    minute, method, path = key
    who = "all requests" if (method, path) == (ALL_REQUESTS, ALL_REQUESTS) else f"{method} {path}"
    return f"{who} minute {minute:%Y-%m-%d %H:%M}"


def app_log_stats_spec(table: str) -> SqlSummary:
    """How `app_log_minute_stats` rows are keyed and compared."""
    return SqlSummary(
        table=table,
        key=("minute_start", "method", "path_template"),
        exact=APP_LOG_EXACT,
        approx=APP_LOG_APPROX,
        tolerance_note=(
            f"requests, errors_4xx, errors_5xx and bytes compared exactly; p95_latency_ms and avg_latency_ms within "
            f"a relative tolerance of {REL_TOLERANCE:g} (float arithmetic depends on the order rows are read in)"
        ),
        describe=_app_log_key,
    )


def check_app_log_minute_stats(
    conn: psycopg.Connection[Any],
    pipeline: Pipeline,
    start: datetime,
    end: datetime,
    backfill_targets: Collection[str] = BACKFILL_TARGETS,
) -> list[CheckResult]:
    """The raw_summaries result of one hour of app_logs: the job's statement over the hour's raw
    rows into a temporary table, compared with the stored minute statistics."""
    window = _hour_window(pipeline)
    stats = pipeline.tables.summary
    if stats is None:
        raise ValueError(f"pipeline {pipeline.name} lacks the minute-stats table in the catalog")
    fields = [*APP_LOG_EXACT, *APP_LOG_APPROX]
    with conn.transaction():
        _read_snapshot(conn)
        conn.execute(
            sql.SQL("CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING INDEXES) ON COMMIT DROP").format(
                sql.Identifier(_RECOMPUTED_STATS), sql.Identifier(stats)
            )
        )
        conn.execute(minute_stats_statement(pipeline.tables.raw, _RECOMPUTED_STATS), _minute_params(window, start, end))
        rows = conn.execute(
            sql.SQL(_APP_LOG_SIDES).format(
                fields=sql.SQL(", ").join(map(sql.Identifier, fields)),
                recomputed=sql.Identifier(_RECOMPUTED_STATS),
                stats=sql.Identifier(stats),
            ),
            {"start": start, "end": end},
        ).fetchall()
    recomputed, stored = _sides(rows, 3, fields)
    spec = app_log_stats_spec(stats)
    return [sql_summary_result(spec, pipeline, window, recomputed, stored, start, end, backfill_targets, {})]


def recompute_minute_stats(conn: psycopg.Connection[Any], pipeline: Pipeline, start: datetime, end: datetime) -> str:
    """Rewrites the app_logs minute statistics of [start, end) (whole windows) from raw, in one
    transaction, with the job's own statement; rows of minutes or endpoints without raw rows go.

    What the job does for every minute a batch touches; this is the repair when a minute was
    left stale (its rows changed outside the job, or the job died between its raw commit and the
    statistics and no later line of the minute came). Returns a line for the log.
    """
    window = _hour_window(pipeline)
    stats = pipeline.tables.summary
    if stats is None:
        raise ValueError(f"pipeline {pipeline.name} lacks the minute-stats table in the catalog")
    if (start - _ORIGIN) % timedelta(seconds=window.duration_s) or (end - _ORIGIN) % timedelta(
        seconds=window.duration_s
    ):
        raise ValueError(f"recompute whole {window.name} windows: {start.isoformat()}..{end.isoformat()} cuts one")
    with conn.transaction():
        deleted = conn.execute(
            sql.SQL("DELETE FROM {} WHERE minute_start >= %s AND minute_start < %s").format(sql.Identifier(stats)),
            (start, end),
        ).rowcount
        written = conn.execute(
            minute_stats_statement(pipeline.tables.raw, stats), _minute_params(window, start, end)
        ).rowcount
    return f"{pipeline.name}: recomputed {stats} of {start.isoformat()}..{end.isoformat()}: {deleted} rows replaced by {written}"


# ------------------------------------------------------------------------------- dispatch

RECOMPUTE_FLAG = "--recompute-summaries"

SparkSummaryCheck = Callable[[SparkSession, Settings, Pipeline, datetime, datetime, Collection[str]], list[CheckResult]]
SqlSummaryCheck = Callable[[psycopg.Connection[Any], Pipeline, datetime, datetime, Collection[str]], list[CheckResult]]
SqlRecompute = Callable[[psycopg.Connection[Any], Pipeline, datetime, datetime], str]

# Pipelines whose summaries can be recomputed from raw, with the function that checks them: in
# Spark with the streaming transformation, or in SQL where the job aggregates in SQL.
SPARK_SUMMARY_CHECKS: Mapping[str, SparkSummaryCheck] = {"user_events": check_user_event_summaries}
SQL_SUMMARY_CHECKS: Mapping[str, SqlSummaryCheck] = {
    "weather": check_weather_summaries,
    "app_logs": check_app_log_minute_stats,
}
# Pipelines without a backfill whose summaries the reconcile job can rewrite from raw itself.
SQL_RECOMPUTES: Mapping[str, SqlRecompute] = {"app_logs": recompute_minute_stats}


def check_summaries(
    spark: Callable[[], SparkSession],
    settings: Settings,
    pipeline: Pipeline,
    start: datetime,
    end: datetime,
    *,
    conn: psycopg.Connection[Any] | None = None,
    backfill_targets: Collection[str] = BACKFILL_TARGETS,
) -> list[CheckResult]:
    """raw_summaries results of one hour for any pipeline (skipped where no recomputation exists).

    `spark` returns the session; it is only called (and a JVM started) when there is work for it.
    `conn` (autocommit) serves the SQL checks; without it they open their own.
    `backfill_targets`: what the pipeline's backfill can redo; a mismatch carries a backfill range
    only when it holds "summaries", else a `fix` for a person.
    """
    if pipeline.tables.summary is None:
        return [CheckResult(RAW_SUMMARIES, "all", "skipped", f"{pipeline.name} keeps no summary table")]
    sql_check = SQL_SUMMARY_CHECKS.get(pipeline.name)
    if sql_check is not None:
        if conn is None:
            with pg_connect(settings.pg_url, autocommit=True, application_name="tributary-reconcile") as own:
                return sql_check(own, pipeline, start, end, backfill_targets)
        return sql_check(conn, pipeline, start, end, backfill_targets)
    spark_check = SPARK_SUMMARY_CHECKS.get(pipeline.name)
    if spark_check is None:
        return [CheckResult(RAW_SUMMARIES, "all", "skipped", f"no recomputation of {pipeline.name} summaries yet")]
    return spark_check(spark(), settings, pipeline, start, end, backfill_targets)
