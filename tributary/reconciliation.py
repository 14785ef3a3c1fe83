"""Reconciliation: do Kafka, the raw table, Elasticsearch and the summaries agree, hour by hour?

One run checks one pipeline and one closed hour (UTC) and stores what it compared in
`reconciliation_runs` / `reconciliation_results` (`PLATFORM` names them). Three checks:

- **kafka_raw**, per topic partition: every offset the job consumed is exactly one raw row or one
  dead letter. The hour's source positions are selected by broker timestamp (`kafka_timestamp`,
  in both tables); within them, and against the position stored just before the hour's first,
  a `lag()` over (partition, offset) finds gaps as offset ranges, and positions stored twice (raw
  *and* dead letter, or two raw rows) are surplus ranges. The job's committed end offsets (latest
  `job_heartbeats.end_offsets` of its `raw` query, written after a batch is stored) bound the
  check: offsets at or past them are in flight and ignored; offsets below them but after the
  partition's last stored position are a trailing gap. Before the partition's first stored
  position, offsets the broker still holds (from its log start) are a leading gap. A missing
  offset carries no timestamp, so a gap is charged to the hour of the stored position that
  follows it (a trailing gap: to every hour from that of the last stored position on, until it
  is fixed). Kafka gaps cannot be backfilled from raw: they are reported, never auto-repaired.
  Offsets inside a range the job recorded as lost (`kafka_lost_ranges`: retention deleted the
  records before the job read them, and the catalog's `on_data_loss` is "record") are no gap:
  they are reported as that lost range, in the hour whose gap they fall in, and fail the run too
  (the hour's data is incomplete, and nothing can refill it), with what a person can do instead
  of a backfill.
- **raw_es**: documents per hour by event time in the pipeline's index family versus raw rows;
  when the counts differ, per-minute histograms of both narrow it down and the document ids
  (`{topic}-{partition}-{offset}`) of the differing minutes are compared, so small mismatches
  list the exact missing (and surplus) ids.
- **raw_summaries** (`spark_jobs/batch/reconcile_summaries.py`): windows recomputed from raw
  versus the summary table (user_events in Spark with the streaming transformation; weather and
  app_logs in SQL, as their jobs aggregate).

Each pipeline's job names the streaming query that stores its raw rows (`RAW_QUERIES`); that
query's heartbeats carry the committed end offsets. A mismatch carries the backfill that repairs
it only where the pipeline's backfill has that target (the caller says which); otherwise its
`fix` says what a person does.

Costs: the Kafka check reads one hour of positions through a BRIN index on the broker timestamp
(migration 0004) plus two index probes per partition (measured: 0.2 s for an hour of 36k positions
in a 2.6M-row table over three day partitions); the ES check is two counts per hour unless they
differ. `weather_readings` and `app_log_events` have no such index yet (migration 0007), so their
hour is found by a scan of every hot day partition: 0.25 s at 2.6M rows (0.06 s with the BRIN
index), growing with the table. The SQL summary checks take 0.1-0.2 s for an hour of 36k rows.

Hours are only checked once *closed*: older than the catalog's `batch.reconcile_delay_hours` plus
the largest window watermark. Hours whose raw partitions are past `batch.hot_retention_days`
(archived by compaction), or whose Elasticsearch index is past its retention, are skipped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import psycopg
from elasticsearch import Elasticsearch

from tributary.catalog import PLATFORM, Pipeline, PlatformNames
from tributary.clients import kafka_config
from tributary.settings import Settings

log = logging.getLogger(__name__)

KAFKA_RAW = "kafka_raw"
RAW_ES = "raw_es"
RAW_SUMMARIES = "raw_summaries"
CHECKS = (KAFKA_RAW, RAW_ES, RAW_SUMMARIES)

# What a backfill can redo for reconciliation: the `targets` of the backfill DAG it triggers.
BACKFILL_TARGETS = ("summaries", "es")
Outcome = Literal["ok", "mismatch", "skipped"]
RunState = Literal["running", "passed", "failed", "error"]
OffsetRange = tuple[int, int]  # first and last offset, both included

HOUR = timedelta(hours=1)
# How many ranges, ids or windows a result lists in its detail (counts are always exact).
LISTED = 100
# Per-minute id comparison only for minutes with at most this many documents on both sides together
# (one search page; also Elasticsearch's default max_result_window).
ID_COMPARISON_LIMIT = 10_000
# A scheduled run catching up after a pause checks at most this many hours.
MAX_HOURS_PER_RUN = 24

# The Elasticsearch index family holding one document per raw row, and its event-time field, per
# pipeline. Pipelines not listed here have no raw <-> Elasticsearch check.
EVENT_INDICES: Mapping[str, tuple[str, str]] = {
    "user_events": ("events", "event_ts"),
    "app_logs": ("logs", "timestamp"),
}
# The streaming query of each pipeline's job that stores the raw rows and dead letters (the jobs'
# query names; a unit test holds them to the job modules). Its heartbeats' end offsets bound the
# Kafka check.
RAW_QUERIES: Mapping[str, str] = {"user_events": "events", "weather": "readings", "app_logs": "logs"}
# The raw tables' event-time column (their partition key).
RAW_EVENT_TIME = "event_ts"


# ------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class BackfillRange:
    """What a backfill must redo to repair a mismatch: a target of the backfill DAG and a range."""

    target: Literal["summaries", "es"]
    start: datetime
    end: datetime

    def to_json(self) -> dict[str, str]:
        return {"target": self.target, "start": self.start.isoformat(), "end": self.end.isoformat()}

    @classmethod
    def from_json(cls, data: Mapping[str, str]) -> BackfillRange:
        target = data["target"]
        if target not in ("summaries", "es"):
            raise ValueError(f"unknown backfill target {target!r} in a stored reconciliation result")
        return cls(target, datetime.fromisoformat(data["start"]), datetime.fromisoformat(data["end"]))  # type: ignore[arg-type]


@dataclass(frozen=True)
class CheckResult:
    """One comparison of one check: a partition, an hour or a window size."""

    check: str
    scope: str
    outcome: Outcome
    message: str
    expected: int | None = None
    actual: int | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)
    backfill: BackfillRange | None = None
    # For a mismatch no backfill repairs: what a person does about it.
    fix: str | None = None

    @property
    def mismatch(self) -> bool:
        return self.outcome == "mismatch"

    def line(self) -> str:
        mark = {"ok": "ok      ", "mismatch": "MISMATCH", "skipped": "skipped "}[self.outcome]
        return f"{mark} {self.check} {self.scope}: {self.message}"


@dataclass(frozen=True)
class HourReport:
    """Everything one run found for one pipeline and hour; `error` when a check could not run."""

    pipeline: str
    hour_start: datetime
    hour_end: datetime
    results: tuple[CheckResult, ...] = ()
    error: str | None = None

    @property
    def state(self) -> RunState:
        if self.error is not None:
            return "error"
        return "failed" if any(r.mismatch for r in self.results) else "passed"

    @property
    def mismatches(self) -> list[CheckResult]:
        return [r for r in self.results if r.mismatch]

    def summary(self) -> str:
        """A readable multi-line summary: a headline, then one line per mismatch or skipped check."""
        when = _hours_text(self.hour_start, self.hour_end)
        if self.state == "error":
            head = f"{self.pipeline} {when}: ERROR: {self.error}"
        elif self.state == "failed":
            head = f"{self.pipeline} {when}: FAILED, {_plural(len(self.mismatches), 'mismatch', 'mismatches')}"
        else:
            checked = sorted({r.check for r in self.results if r.outcome == "ok"})
            head = f"{self.pipeline} {when}: passed ({', '.join(checked) or 'nothing to compare'})"
        lines = [head, *("  " + r.line() for r in self.results if r.outcome != "ok")]
        # Recorded lost ranges are records Kafka no longer has: they carry their own fix.
        kafka_gaps = [
            r for r in self.mismatches if r.check == KAFKA_RAW and (r.detail.get("missing") or not r.detail.get("lost"))
        ]
        repairs = [r.backfill for r in self.mismatches if r.backfill is not None]
        if repairs:
            lines.append(
                "  backfill needed: "
                + "; ".join(f"{b.target} {_range_text(b.start, b.end)}" for b in _merge_ranges(repairs))
            )
        fixes = dict.fromkeys(r.fix for r in self.mismatches if r.fix is not None and r.backfill is None)
        lines += [f"  to fix by hand: {fix}" for fix in fixes]
        if kafka_gaps:
            lines.append(
                "  Kafka offsets missing from raw cannot be rebuilt from raw: re-consume them from the topic "
                "while Kafka retains them (see each partition's gaps), or accept the loss"
            )
        return "\n".join(lines)


# ---------------------------------------------------------------------------------- hours


def floor_hour(ts: datetime) -> datetime:
    """The start of `ts`'s hour, in UTC."""
    return _utc(ts).replace(minute=0, second=0, microsecond=0)


def hours_between(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """Whole UTC hours covering [start, end): start rounded down, end rounded up to the hour."""
    low, high = floor_hour(start), floor_hour(_utc(end) + HOUR - timedelta(microseconds=1))
    if high <= low:
        raise ValueError(f"empty hour range: end {end.isoformat()} is not after start {start.isoformat()}")
    return [(low + i * HOUR, low + (i + 1) * HOUR) for i in range((high - low) // HOUR)]


def closed_until(pipeline: Pipeline, now: datetime) -> datetime:
    """End of the latest closed hour: late data has landed and every window has been emitted."""
    watermark_s = max((w.watermark_s for w in pipeline.windows), default=0)
    settled = _utc(now) - timedelta(hours=pipeline.batch.reconcile_delay_hours, seconds=watermark_s)
    return floor_hour(settled)


def plan_hours(
    pipeline: Pipeline,
    now: datetime,
    *,
    requested: tuple[datetime, datetime] | None = None,
    last_checked_end: datetime | None = None,
    max_hours: int = MAX_HOURS_PER_RUN,
) -> tuple[list[tuple[datetime, datetime]], list[tuple[datetime, datetime]]]:
    """(hours to check, requested hours left out because they are not closed yet).

    With a requested range: its closed hours. Without: the hours after the last one checked up to
    the latest closed hour (at most `max_hours`, the newest), or just the latest closed hour.
    """
    closed = closed_until(pipeline, now)
    if requested is not None:
        hours = hours_between(*requested)
        return [h for h in hours if h[1] <= closed], [h for h in hours if h[1] > closed]
    first = closed - HOUR if last_checked_end is None else max(_utc(last_checked_end), closed - max_hours * HOUR)
    if first >= closed:
        return [], []
    return hours_between(first, closed), []


def retention_skip(pipeline: Pipeline, hour_start: datetime, now: datetime) -> str | None:
    """Why nothing of this hour can be checked any more (raw archived), or None."""
    oldest_day = floor_hour(now).replace(hour=0) - timedelta(days=pipeline.batch.hot_retention_days)
    if hour_start < oldest_day:
        return (
            f"raw day partitions older than {pipeline.batch.hot_retention_days} days are archived to the lake "
            "by compaction; reconcile them from the archive if needed"
        )
    return None


# ---------------------------------------------------------------------------- kafka <-> raw


@dataclass(frozen=True)
class HourPositions:
    """Source positions of one partition stored for one hour (below the committed end offset)."""

    partition: int
    first: int
    last: int
    distinct: int
    raw_rows: int
    dead_rows: int
    gaps: tuple[OffsetRange, ...] = ()  # between stored positions of the hour (first LISTED)
    surplus: tuple[OffsetRange, ...] = ()  # positions stored more than once (first LISTED)
    # Recorded lost ranges meeting those gaps, each with how many of its offsets are in them
    # (counted over every gap of the hour, not only the listed ones).
    lost_in_gaps: tuple[tuple[OffsetRange, int], ...] = ()


@dataclass(frozen=True)
class LastStored:
    """The partition's highest stored offset below the committed end, and its broker timestamp."""

    offset: int
    kafka_timestamp: datetime | None


def offset_ranges(offsets: Iterable[int]) -> list[OffsetRange]:
    """Sorted offsets collapsed into (first, last) ranges of consecutive offsets."""
    ranges: list[OffsetRange] = []
    for offset in sorted(set(offsets)):
        if ranges and offset == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], offset)
        else:
            ranges.append((offset, offset))
    return ranges


def range_size(ranges: Iterable[OffsetRange]) -> int:
    return sum(last - first + 1 for first, last in ranges)


def merge_ranges(ranges: Iterable[OffsetRange]) -> list[OffsetRange]:
    """Ranges merged where they overlap or touch, sorted."""
    merged: list[OffsetRange] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def overlap(a: OffsetRange, b: OffsetRange) -> int:
    """How many offsets two ranges share."""
    return max(0, min(a[1], b[1]) - max(a[0], b[0]) + 1)


def subtract_ranges(ranges: Iterable[OffsetRange], removed: Iterable[OffsetRange]) -> list[OffsetRange]:
    """The parts of `ranges` outside every range of `removed`, sorted."""
    cuts = merge_ranges(removed)
    result: list[OffsetRange] = []
    for first, last in sorted(ranges):
        start = first
        for cut_first, cut_last in cuts:
            if cut_last < start or cut_first > last:
                continue
            if cut_first > start:
                result.append((start, cut_first - 1))
            start = cut_last + 1
        if start <= last:
            result.append((start, last))
    return result


def format_half_open(ranges: Sequence[OffsetRange], limit: int = 10) -> str:
    """`[12, 40), [99, 100)`: ranges as Kafka offsets `[from, to)`, as the job recorded them."""
    shown = [f"[{first}, {last + 1})" for first, last in ranges[:limit]]
    if len(ranges) > limit:
        shown.append(f"... {len(ranges) - limit} more ranges")
    return ", ".join(shown)


def format_ranges(ranges: Sequence[OffsetRange], limit: int = 10) -> str:
    """`12, 40-45, 99` (at most `limit` ranges, then how many more)."""
    shown = [str(a) if a == b else f"{a}-{b}" for a, b in ranges[:limit]]
    if len(ranges) > limit:
        shown.append(f"... {len(ranges) - limit} more ranges")
    return ", ".join(shown)


def partition_coverage(
    topic: str,
    partition: int,
    hour: HourPositions | None,
    *,
    hour_end: datetime,
    predecessor: int | None,
    log_start: int,
    committed_end: int | None,
    last_stored: LastStored | None,
    lost: Sequence[OffsetRange] = (),
    lost_table: str = PLATFORM.lost_ranges_table,
) -> CheckResult:
    """The kafka_raw result of one partition and hour (see the module docstring for the rules).

    `predecessor`: the highest stored offset below the hour's first one (any hour), None if there
    is none; `log_start`: the broker's first retained offset; `committed_end`: the next offset
    the job will read (None when no heartbeat recorded one); `last_stored`: the partition's
    highest stored offset below `committed_end`; `lost`: the partition's ranges the job recorded
    in `lost_table` as deleted by retention before it read them (merged; `hour.lost_in_gaps` says
    which meet the hour's inner gaps).
    """
    edge_gaps: list[OffsetRange] = []  # before the hour's first and after the last stored offset
    inner_gaps: list[OffsetRange] = []
    inner_missing = 0
    lost_hits: dict[OffsetRange, int] = {}
    distinct = stored = raw_rows = dead_rows = 0
    surplus: tuple[OffsetRange, ...] = ()
    if hour is not None:
        # Offsets below the broker's log start are gone from Kafka (retention): nothing to compare.
        lead_from = predecessor + 1 if predecessor is not None else min(log_start, hour.first)
        if hour.first > lead_from:
            edge_gaps.append((lead_from, hour.first - 1))
        inner_gaps = subtract_ranges(hour.gaps, lost)
        inner_missing = (hour.last - hour.first + 1) - hour.distinct
        for lost_range, count in hour.lost_in_gaps:
            inner_missing -= count
            lost_hits[lost_range] = lost_hits.get(lost_range, 0) + count
        distinct, raw_rows, dead_rows = hour.distinct, hour.raw_rows, hour.dead_rows
        stored = raw_rows + dead_rows
        surplus = hour.surplus
    if committed_end is not None:
        tail_from = last_stored.offset + 1 if last_stored is not None else log_start
        last_ts = last_stored.kafka_timestamp if last_stored is not None else None
        if tail_from < committed_end and (last_ts is None or last_ts < hour_end):
            edge_gaps.append((tail_from, committed_end - 1))
    for gap in edge_gaps:
        for lost_range in lost:
            if shared := overlap(gap, lost_range):
                lost_hits[lost_range] = lost_hits.get(lost_range, 0) + shared
    edge_left = subtract_ranges(edge_gaps, lost)
    gaps = sorted(edge_left + inner_gaps)
    missing = inner_missing + range_size(edge_left)
    lost_ranges = sorted(lost_hits)
    lost_count = sum(lost_hits.values())
    duplicates = stored - distinct
    expected = distinct + missing
    detail = {
        "topic": topic,
        "partition": partition,
        "first": hour.first if hour else None,
        "last": hour.last if hour else None,
        "predecessor": predecessor,
        "log_start": log_start,
        "committed_end": committed_end,
        "raw_rows": raw_rows,
        "dead_letters": dead_rows,
        "missing": missing,
        "duplicates": duplicates,
        "gaps": [list(g) for g in gaps[:LISTED]],
        "surplus": [list(s) for s in surplus[:LISTED]],
        "lost": lost_count,
        # As recorded: Kafka offsets [from_offset, to_offset).
        "lost_ranges": [{"from_offset": first, "to_offset": last + 1} for first, last in lost_ranges[:LISTED]],
    }
    problems = []
    if missing:
        problems.append(f"{_plural(missing, 'offset')} consumed but not stored, offsets {format_ranges(gaps)}")
    if lost_count:
        problems.append(
            f"{_plural(lost_count, 'offset')} deleted by Kafka retention before the job read them, "
            f"recorded lost {'range' if len(lost_ranges) == 1 else 'ranges'} {format_half_open(lost_ranges)}"
        )
    if duplicates:
        problems.append(
            f"{_plural(duplicates, 'offset')} stored twice (raw and dead letter), offsets {format_ranges(surplus)}"
        )
    stored_text = f"{stored} of {expected} positions stored: {raw_rows} raw rows, {dead_rows} dead letters"
    if committed_end is None:
        stored_text += "; no committed end offset recorded, so offsets after the last stored one are not checked"
    if problems:
        fix = None
        if lost_count:
            fix = (
                f"records Kafka retention deleted before the job read them (see {lost_table}) cannot be consumed "
                "again: re-send them from their source if it still has them, or accept the loss; to lose no more, "
                "raise the topic's retention.ms in the catalog or find why the job fell that far behind"
            )
        return CheckResult(
            KAFKA_RAW,
            f"{topic}/{partition}",
            "mismatch",
            "; ".join([*problems, stored_text]),
            expected,
            stored,
            detail,
            fix=fix,
        )
    return CheckResult(KAFKA_RAW, f"{topic}/{partition}", "ok", stored_text, expected, stored, detail)


_HOUR_POSITIONS = """
WITH stored AS (
    SELECT kafka_partition, kafka_offset, 1 AS raw_rows, 0 AS dead_rows FROM {raw}
    WHERE topic = %(topic)s AND kafka_timestamp >= %(start)s AND kafka_timestamp < %(end)s
    UNION ALL
    SELECT kafka_partition, kafka_offset, 0, 1 FROM {dead}
    WHERE topic = %(topic)s AND kafka_timestamp >= %(start)s AND kafka_timestamp < %(end)s
), committed AS (
    SELECT * FROM unnest(%(partitions)s::integer[], %(ends)s::bigint[]) AS c (kafka_partition, end_offset)
), lost AS (
    -- Ranges the job recorded as lost (merged, so disjoint), first and last offset.
    SELECT * FROM unnest(%(lost_partitions)s::integer[], %(lost_firsts)s::bigint[], %(lost_lasts)s::bigint[])
        AS l (kafka_partition, first_offset, last_offset)
), positions AS MATERIALIZED (
    -- Offsets at or past the committed end belong to a batch still being written: not checked.
    SELECT s.kafka_partition, s.kafka_offset, sum(s.raw_rows) AS raw_rows, sum(s.dead_rows) AS dead_rows
    FROM stored s LEFT JOIN committed c ON c.kafka_partition = s.kafka_partition
    WHERE c.end_offset IS NULL OR s.kafka_offset < c.end_offset
    GROUP BY s.kafka_partition, s.kafka_offset
), gaps AS (
    SELECT kafka_partition, previous + 1 AS first_offset, kafka_offset - 1 AS last_offset,
           row_number() OVER (PARTITION BY kafka_partition ORDER BY kafka_offset) AS n
    FROM (SELECT kafka_partition, kafka_offset,
                 lag(kafka_offset) OVER (PARTITION BY kafka_partition ORDER BY kafka_offset) AS previous
          FROM positions) ordered
    WHERE kafka_offset > previous + 1
), surplus AS (
    -- Islands of consecutive duplicated offsets: offset minus rank is constant within one.
    SELECT kafka_partition, min(kafka_offset) AS first_offset, max(kafka_offset) AS last_offset,
           row_number() OVER (PARTITION BY kafka_partition ORDER BY min(kafka_offset)) AS n
    FROM (SELECT kafka_partition, kafka_offset,
                 kafka_offset - row_number() OVER (PARTITION BY kafka_partition ORDER BY kafka_offset) AS island
          FROM positions WHERE raw_rows + dead_rows > 1) duplicated
    GROUP BY kafka_partition, island
)
SELECT 'span', kafka_partition, min(kafka_offset), max(kafka_offset), count(*), sum(raw_rows), sum(dead_rows)
FROM positions GROUP BY kafka_partition
UNION ALL
SELECT 'gap', kafka_partition, first_offset, last_offset, NULL, NULL, NULL FROM gaps WHERE n <= %(listed)s
UNION ALL
SELECT 'surplus', kafka_partition, first_offset, last_offset, NULL, NULL, NULL FROM surplus WHERE n <= %(listed)s
UNION ALL
-- Each lost range meeting the gaps, and how many of its offsets are in them (every gap, listed or not).
SELECT 'lost', l.kafka_partition, l.first_offset, l.last_offset,
       sum(least(l.last_offset, g.last_offset) - greatest(l.first_offset, g.first_offset) + 1)::bigint, NULL, NULL
FROM lost l JOIN gaps g ON g.kafka_partition = l.kafka_partition
    AND g.first_offset <= l.last_offset AND g.last_offset >= l.first_offset
GROUP BY l.kafka_partition, l.first_offset, l.last_offset
"""

_PREDECESSOR = """
SELECT greatest(
    (SELECT max(kafka_offset) FROM {raw}
     WHERE topic = %(topic)s AND kafka_partition = %(partition)s AND kafka_offset < %(offset)s),
    (SELECT max(kafka_offset) FROM {dead}
     WHERE topic = %(topic)s AND kafka_partition = %(partition)s AND kafka_offset < %(offset)s))
"""

_LAST_STORED = """
SELECT kafka_offset, kafka_timestamp FROM (
    (SELECT kafka_offset, kafka_timestamp FROM {raw}
     WHERE topic = %(topic)s AND kafka_partition = %(partition)s AND kafka_offset < %(end)s
     ORDER BY kafka_offset DESC LIMIT 1)
    UNION ALL
    (SELECT kafka_offset, kafka_timestamp FROM {dead}
     WHERE topic = %(topic)s AND kafka_partition = %(partition)s AND kafka_offset < %(end)s
     ORDER BY kafka_offset DESC LIMIT 1)
) last_positions ORDER BY kafka_offset DESC LIMIT 1
"""

_LOST_RANGES = """
SELECT kafka_partition, from_offset, to_offset - 1 FROM {lost}
WHERE topic = %(topic)s AND to_offset IS NOT NULL ORDER BY kafka_partition, from_offset
"""

_COMMITTED = """
SELECT end_offsets -> %(topic)s FROM {heartbeats}
WHERE job_name = %(job)s AND query_name = %(query)s AND end_offsets ? %(topic)s
ORDER BY recorded_at DESC, batch_id DESC LIMIT 1
"""


def committed_end_offsets(
    conn: psycopg.Connection[Any], pipeline: Pipeline, platform: PlatformNames = PLATFORM
) -> dict[int, int] | None:
    """{partition: next offset} the job's raw query (`RAW_QUERIES`) has committed (its latest
    heartbeat), or None."""
    query = f"{pipeline.job_name}.{RAW_QUERIES.get(pipeline.name, 'raw')}"
    row = conn.execute(
        _COMMITTED.format(heartbeats=platform.heartbeats_table),
        {"topic": pipeline.topic.name, "job": pipeline.job_name, "query": query},
    ).fetchone()
    if row is None or row[0] is None:
        return None
    offsets = row[0]
    if not isinstance(offsets, Mapping):
        raise ValueError(
            f"job_heartbeats.end_offsets of {query} is {offsets!r}, not "
            '{"partition": offset}; the heartbeat listener (spark_jobs/heartbeats.py) writes that form'
        )
    return {int(p): int(o) for p, o in offsets.items()}


def log_start_offsets(
    settings: Settings, topic: str, partitions: Iterable[int], timeout_s: float = 10.0
) -> dict[int, int]:
    """The broker's first retained offset of each partition (records below it are gone)."""
    from tributary.kafka_log import KafkaLog

    with KafkaLog(kafka_config(settings), client_id="tributary-reconciliation", timeout_s=timeout_s) as reader:
        bounds = reader.bounds((topic, partition) for partition in partitions)
    return {partition: b.start for (_, partition), b in bounds.items()}


def topic_partitions(settings: Settings, topic: str, timeout_s: float = 10.0) -> list[int]:
    """Partition numbers of `topic` on the broker; raises with the fix when it is missing."""
    from tributary.kafka_log import KafkaLog

    with KafkaLog(kafka_config(settings), client_id="tributary-reconciliation", timeout_s=timeout_s) as reader:
        return reader.partitions(topic)


def recorded_lost_ranges(
    conn: psycopg.Connection[Any], topic: str, platform: PlatformNames = PLATFORM
) -> dict[int, list[OffsetRange]]:
    """{partition: merged (first, last) ranges} the jobs recorded as lost for `topic`.

    Ranges of unknown end (the log was replaced: topic recreated or truncated) are left out: their
    offsets belong to a log that no longer exists, so no gap of today's offsets is theirs.
    """
    rows = conn.execute(_LOST_RANGES.format(lost=platform.lost_ranges_table), {"topic": topic}).fetchall()
    ranges: dict[int, list[OffsetRange]] = {}
    for partition, first, last in rows:
        ranges.setdefault(int(partition), []).append((int(first), int(last)))
    return {partition: merge_ranges(found) for partition, found in ranges.items()}


def check_kafka_raw(
    conn: psycopg.Connection[Any],
    pipeline: Pipeline,
    hour_start: datetime,
    hour_end: datetime,
    *,
    log_starts: Mapping[int, int],
    committed_ends: Mapping[int, int] | None,
    platform: PlatformNames = PLATFORM,
) -> list[CheckResult]:
    """kafka_raw results of one hour, one per partition (those of the topic and any stored)."""
    topic = pipeline.topic.name
    tables = {"raw": pipeline.tables.raw, "dead": platform.dead_letters_table}
    ends = dict(committed_ends or {})
    lost = recorded_lost_ranges(conn, topic, platform)
    flat_lost = [(partition, first, last) for partition, ranges in lost.items() for first, last in ranges]
    rows = conn.execute(
        _HOUR_POSITIONS.format(**tables),
        {
            "topic": topic,
            "start": hour_start,
            "end": hour_end,
            "partitions": list(ends),
            "ends": list(ends.values()),
            "lost_partitions": [r[0] for r in flat_lost],
            "lost_firsts": [r[1] for r in flat_lost],
            "lost_lasts": [r[2] for r in flat_lost],
            "listed": LISTED,
        },
    ).fetchall()
    spans: dict[int, HourPositions] = {}
    gaps: dict[int, list[OffsetRange]] = {}
    surplus: dict[int, list[OffsetRange]] = {}
    lost_in_gaps: dict[int, list[tuple[OffsetRange, int]]] = {}
    for kind, partition, first, last, count, raw_rows, dead_rows in rows:
        if kind == "span":
            spans[partition] = HourPositions(partition, first, last, int(count), int(raw_rows), int(dead_rows))
        elif kind == "lost":
            lost_in_gaps.setdefault(partition, []).append(((int(first), int(last)), int(count)))
        else:
            (gaps if kind == "gap" else surplus).setdefault(partition, []).append((int(first), int(last)))
    results = []
    for partition in sorted(set(log_starts) | set(ends) | set(spans)):
        hour = spans.get(partition)
        if hour is not None:
            hour = replace(
                hour,
                gaps=tuple(sorted(gaps.get(partition, []))),
                surplus=tuple(sorted(surplus.get(partition, []))),
                lost_in_gaps=tuple(sorted(lost_in_gaps.get(partition, []))),
            )
        predecessor = None
        if hour is not None:
            found = conn.execute(
                _PREDECESSOR.format(**tables), {"topic": topic, "partition": partition, "offset": hour.first}
            ).fetchone()
            predecessor = None if found is None or found[0] is None else int(found[0])
        last_stored = None
        end = ends.get(partition)
        if end is not None:
            found = conn.execute(
                _LAST_STORED.format(**tables), {"topic": topic, "partition": partition, "end": end}
            ).fetchone()
            last_stored = None if found is None else LastStored(int(found[0]), found[1])
        results.append(
            partition_coverage(
                topic,
                partition,
                hour,
                hour_end=hour_end,
                predecessor=predecessor,
                log_start=log_starts.get(partition, 0),
                committed_end=end,
                last_stored=last_stored,
                lost=lost.get(partition, ()),
                lost_table=platform.lost_ranges_table,
            )
        )
    return results


# ---------------------------------------------------------------------- raw <-> Elasticsearch

_RAW_COUNT = "SELECT count(*) FROM {raw} WHERE {ts} >= %(start)s AND {ts} < %(end)s"
_RAW_MINUTES = """
SELECT date_bin('1 minute', {ts}, %(start)s) AS minute, count(*) FROM {raw}
WHERE {ts} >= %(start)s AND {ts} < %(end)s GROUP BY 1
"""
_RAW_IDS = """
SELECT topic || '-' || kafka_partition || '-' || kafka_offset FROM {raw}
WHERE {ts} >= %(start)s AND {ts} < %(end)s
"""


@dataclass(frozen=True)
class IdComparison:
    """Ids in raw but not in Elasticsearch (missing) and the other way round (surplus)."""

    missing: tuple[str, ...] = ()
    surplus: tuple[str, ...] = ()
    # Minutes whose ids were not compared (too many documents); their difference is only counted.
    uncompared_minutes: tuple[datetime, ...] = ()


def differing_minutes(raw: Mapping[datetime, int], es: Mapping[datetime, int]) -> list[datetime]:
    """Minutes whose document count differs between raw and Elasticsearch, in order."""
    return sorted(m for m in set(raw) | set(es) if raw.get(m, 0) != es.get(m, 0))


def compare_ids(raw_ids: Iterable[str], es_ids: Iterable[str]) -> tuple[list[str], list[str]]:
    """(missing from Elasticsearch, surplus in Elasticsearch), each sorted by source position."""
    raw_set, es_set = set(raw_ids), set(es_ids)
    return sorted(raw_set - es_set, key=_position_key), sorted(es_set - raw_set, key=_position_key)


def _position_key(doc_id: str) -> tuple[str, int, int]:
    """`{topic}-{partition}-{offset}` -> (topic, partition, offset); topics may contain dashes."""
    parts = doc_id.rsplit("-", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return (parts[0], int(parts[1]), int(parts[2]))
    return (doc_id, -1, -1)


def check_raw_es(
    conn: psycopg.Connection[Any],
    es: Elasticsearch,
    pipeline: Pipeline,
    hour_start: datetime,
    hour_end: datetime,
    *,
    now: datetime,
    backfill_targets: Collection[str] = BACKFILL_TARGETS,
) -> CheckResult:
    """The raw_es result of one hour (skipped for pipelines without an event index).

    `backfill_targets`: what the pipeline's backfill can redo; without "es" a mismatch carries a
    `fix` for a person instead of a backfill range.
    """
    scope = _range_text(hour_start, hour_end)
    if pipeline.name not in EVENT_INDICES:
        indices = ", ".join(i.pattern for i in pipeline.indices.values())
        return CheckResult(
            RAW_ES,
            scope,
            "skipped",
            f"{pipeline.name} keeps no Elasticsearch document per raw row "
            + (f"(its indices {indices} hold derived data)" if indices else "(the catalog names no index for it)")
            + "; nothing to compare",
        )
    index_key, time_field = EVENT_INDICES[pipeline.name]
    index = pipeline.indices[index_key]
    expired_before = floor_hour(now).replace(hour=0) - timedelta(days=index.retention_days)
    if hour_start < expired_before:
        return CheckResult(
            RAW_ES, scope, "skipped", f"{index.pattern} keeps {index.retention_days} days; this hour has expired"
        )
    params = {"start": hour_start, "end": hour_end}
    sql = {"raw": pipeline.tables.raw, "ts": RAW_EVENT_TIME}
    raw_count = int(conn.execute(_RAW_COUNT.format(**sql), params).fetchone()[0])  # type: ignore[index]
    es_count = _es_count(es, index.pattern, time_field, hour_start, hour_end)
    detail: dict[str, Any] = {"index": index.pattern, "raw": raw_count, "es": es_count}
    if raw_count == es_count:
        return CheckResult(
            RAW_ES, scope, "ok", f"{raw_count} documents, as many as raw rows", raw_count, es_count, detail
        )

    raw_minutes = {_utc(m): int(n) for m, n in conn.execute(_RAW_MINUTES.format(**sql), params).fetchall()}
    es_minutes = _es_minutes(es, index.pattern, time_field, hour_start, hour_end)
    minutes = differing_minutes(raw_minutes, es_minutes)
    ids = _compare_minute_ids(conn, es, pipeline, index.pattern, time_field, minutes, raw_minutes, es_minutes)
    detail.update(
        {
            "differing_minutes": [m.isoformat() for m in minutes[:LISTED]],
            "missing_count": len(ids.missing),
            "surplus_count": len(ids.surplus),
            "missing_ids": list(ids.missing[:LISTED]),
            "surplus_ids": list(ids.surplus[:LISTED]),
            "uncompared_minutes": [m.isoformat() for m in ids.uncompared_minutes[:LISTED]],
        }
    )
    parts = [f"Elasticsearch has {es_count} documents for {raw_count} raw rows"]
    if ids.missing:
        parts.append(f"missing: {_listing(ids.missing)}")
    if ids.surplus:
        parts.append(f"not in raw: {_listing(ids.surplus)}")
    if ids.uncompared_minutes:
        parts.append(f"{_plural(len(ids.uncompared_minutes), 'minute')} too large to compare ids")
    backfill, fix = None, None
    if "es" in backfill_targets:
        backfill = BackfillRange("es", minutes[0], minutes[-1] + timedelta(minutes=1)) if minutes else None
    else:
        fix = (
            f"{pipeline.name} has no backfill that writes Elasticsearch (spark_jobs/batch/backfill.py): re-create "
            f"the missing documents in {index.pattern} from their raw rows under the same ids, and delete the ids "
            "not in raw"
        )
    return CheckResult(RAW_ES, scope, "mismatch", "; ".join(parts), raw_count, es_count, detail, backfill, fix)


def _range_query(time_field: str, start: datetime, end: datetime) -> dict[str, Any]:
    return {"range": {time_field: {"gte": start.isoformat(), "lt": end.isoformat()}}}


def _es_count(es: Elasticsearch, pattern: str, time_field: str, start: datetime, end: datetime) -> int:
    response = es.count(
        index=pattern, query=_range_query(time_field, start, end), ignore_unavailable=True, allow_no_indices=True
    )
    return int(response["count"])


def _es_minutes(
    es: Elasticsearch, pattern: str, time_field: str, start: datetime, end: datetime
) -> dict[datetime, int]:
    response = es.search(
        index=pattern,
        size=0,
        query=_range_query(time_field, start, end),
        aggs={"minutes": {"date_histogram": {"field": time_field, "fixed_interval": "1m", "min_doc_count": 1}}},
        ignore_unavailable=True,
        allow_no_indices=True,
    )
    buckets = (response.get("aggregations") or {}).get("minutes", {}).get("buckets", [])
    return {datetime.fromtimestamp(b["key"] / 1000, UTC): int(b["doc_count"]) for b in buckets}


def _compare_minute_ids(
    conn: psycopg.Connection[Any],
    es: Elasticsearch,
    pipeline: Pipeline,
    pattern: str,
    time_field: str,
    minutes: Sequence[datetime],
    raw_minutes: Mapping[datetime, int],
    es_minutes: Mapping[datetime, int],
) -> IdComparison:
    missing: list[str] = []
    surplus: list[str] = []
    uncompared = []
    for minute in minutes:
        raw_n, es_n = raw_minutes.get(minute, 0), es_minutes.get(minute, 0)
        if raw_n + es_n > ID_COMPARISON_LIMIT:
            uncompared.append(minute)
            continue
        end = minute + timedelta(minutes=1)
        raw_ids = [
            r[0]
            for r in conn.execute(
                _RAW_IDS.format(raw=pipeline.tables.raw, ts=RAW_EVENT_TIME), {"start": minute, "end": end}
            ).fetchall()
        ]
        es_ids: list[str] = []
        if es_n:
            response = es.search(
                index=pattern,
                size=es_n,
                source=False,
                query=_range_query(time_field, minute, end),
                ignore_unavailable=True,
                allow_no_indices=True,
            )
            es_ids = [hit["_id"] for hit in response["hits"]["hits"]]
        lacking, extra = compare_ids(raw_ids, es_ids)
        missing += lacking
        surplus += extra
    return IdComparison(tuple(missing), tuple(surplus), tuple(uncompared))


# --------------------------------------------------------------------------------- backfill


@dataclass(frozen=True)
class BackfillRequest:
    """One run of the backfill DAG: a pipeline, a target, a range, and the runs it repairs."""

    pipeline: str
    target: str
    start: datetime
    end: datetime
    run_ids: tuple[int, ...]

    @property
    def dag_run_id(self) -> str:
        """Deterministic, so a retried trigger finds its run instead of starting a second one."""
        return f"reconciliation__{self.pipeline}__{self.target}__{self.start:%Y%m%dT%H%M%S}__{self.end:%Y%m%dT%H%M%S}__{self.run_ids[0]}"

    def conf(self) -> dict[str, Any]:
        """The backfill DAG's params (tributary_backfill: pipeline, start, end, targets, dry_run)."""
        return {
            "pipeline": self.pipeline,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "targets": [self.target],
            "dry_run": False,
        }


def backfill_requests(runs: Iterable[tuple[int, str, Sequence[CheckResult]]]) -> list[BackfillRequest]:
    """Backfills repairing the mismatches of (run id, pipeline, results): overlapping or adjacent
    ranges of the same pipeline and target merged into one request. Kafka gaps never appear here."""
    pieces: dict[tuple[str, str], list[tuple[datetime, datetime, int]]] = {}
    for run_id, pipeline, results in runs:
        for result in results:
            if result.mismatch and result.backfill is not None:
                b = result.backfill
                pieces.setdefault((pipeline, b.target), []).append((b.start, b.end, run_id))
    requests = []
    for (pipeline, target), spans in sorted(pieces.items()):
        spans.sort()
        start, end, ids = spans[0][0], spans[0][1], {spans[0][2]}
        for s, e, run_id in spans[1:]:
            if s <= end:
                end, ids = max(end, e), ids | {run_id}
                continue
            requests.append(BackfillRequest(pipeline, target, start, end, tuple(sorted(ids))))
            start, end, ids = s, e, {run_id}
        requests.append(BackfillRequest(pipeline, target, start, end, tuple(sorted(ids))))
    return requests


# ------------------------------------------------------------------------------------ store


@dataclass(frozen=True)
class StoredRun:
    """A row of the runs table with its results."""

    id: int
    pipeline: str
    hour_start: datetime
    hour_end: datetime
    state: str
    summary: str | None
    backfill_triggered: bool
    backfill_run_ids: tuple[str, ...]
    results: tuple[CheckResult, ...]


class ReconciliationStore:
    """Reads and writes the runs and results tables over one psycopg connection."""

    def __init__(self, conn: psycopg.Connection[Any], platform: PlatformNames = PLATFORM) -> None:
        self.conn = conn
        self.runs = platform.reconciliation_runs_table
        self.results = platform.reconciliation_results_table

    def start(self, pipeline: str, hour_start: datetime, hour_end: datetime, requested_by: str) -> int:
        """A new run in state 'running'; returns its id."""
        with self.conn.transaction():
            row = self.conn.execute(
                f"INSERT INTO {self.runs} (pipeline, hour_start, hour_end, requested_by) "
                "VALUES (%s, %s, %s, %s) RETURNING id",
                (pipeline, hour_start, hour_end, requested_by),
            ).fetchone()
        assert row is not None
        return int(row[0])

    def finish(self, run_id: int, report: HourReport) -> None:
        """Results, final state and summary of a run, in one transaction."""
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {self.results} (run_id, check_name, scope, outcome, expected, actual, detail) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb)",
                [
                    (run_id, r.check, r.scope, r.outcome, r.expected, r.actual, json.dumps(_stored_detail(r)))
                    for r in report.results
                ],
            )
            cur.execute(
                f"UPDATE {self.runs} SET state = %s, summary = %s, finished_at = now() WHERE id = %s",
                (report.state, report.summary(), run_id),
            )

    def last_checked_end(self, pipeline: str) -> datetime | None:
        """End of the newest hour a finished run (passed or failed) checked."""
        with self.conn.transaction():
            row = self.conn.execute(
                f"SELECT max(hour_end) FROM {self.runs} WHERE pipeline = %s AND state IN ('passed', 'failed')",
                (pipeline,),
            ).fetchone()
        return None if row is None or row[0] is None else _utc(row[0])

    def runs_requested_by(self, requested_by: str) -> list[StoredRun]:
        """The newest run per pipeline and hour asked for by `requested_by`, with results."""
        with self.conn.transaction():
            runs = self.conn.execute(
                f"""SELECT DISTINCT ON (pipeline, hour_start) id, pipeline, hour_start, hour_end, state, summary,
                           backfill_triggered, backfill_run_ids
                    FROM {self.runs} WHERE requested_by = %s ORDER BY pipeline, hour_start, id DESC""",
                (requested_by,),
            ).fetchall()
            ids = [r[0] for r in runs]
            rows = self.conn.execute(
                f"""SELECT run_id, check_name, scope, outcome, expected, actual, detail FROM {self.results}
                    WHERE run_id = ANY(%s) ORDER BY run_id, check_name, scope""",
                (ids,),
            ).fetchall()
        results: dict[int, list[CheckResult]] = {}
        for run_id, check, scope, outcome, expected, actual, detail in rows:
            results.setdefault(run_id, []).append(_loaded_result(check, scope, outcome, expected, actual, detail))
        return [
            StoredRun(
                int(r[0]),
                r[1],
                _utc(r[2]),
                _utc(r[3]),
                r[4],
                r[5],
                bool(r[6]),
                tuple(r[7] or ()),
                tuple(results.get(r[0], [])),
            )
            for r in runs
        ]

    def mark_backfill(self, run_ids: Iterable[int], dag_run_id: str) -> None:
        """Records that the backfill `dag_run_id` was triggered for these runs (idempotent)."""
        with self.conn.transaction():
            self.conn.execute(
                f"""UPDATE {self.runs} SET backfill_triggered = true,
                           backfill_run_ids = CASE WHEN %s = ANY(backfill_run_ids) THEN backfill_run_ids
                                                   ELSE backfill_run_ids || %s END
                    WHERE id = ANY(%s)""",
                (dag_run_id, [dag_run_id], list(run_ids)),
            )


def _stored_detail(result: CheckResult) -> dict[str, Any]:
    detail = {**result.detail, "message": result.message}
    if result.backfill is not None:
        detail["backfill"] = result.backfill.to_json()
    if result.fix is not None:
        detail["fix"] = result.fix
    return detail


def _loaded_result(
    check: str, scope: str, outcome: Outcome, expected: int | None, actual: int | None, detail: Mapping[str, Any]
) -> CheckResult:
    data = dict(detail)
    message = str(data.pop("message", ""))
    backfill = data.pop("backfill", None)
    fix = data.pop("fix", None)
    return CheckResult(
        check,
        scope,
        outcome,
        message,
        expected,
        actual,
        data,
        BackfillRange.from_json(backfill) if backfill else None,
        None if fix is None else str(fix),
    )


def requested_by_airflow(dag_id: str, run_id: str) -> str:
    """The `requested_by` of runs started by an Airflow DAG run."""
    return f"airflow:{dag_id}/{run_id}"


# ---------------------------------------------------------------------------------- helpers


def _utc(ts: datetime) -> datetime:
    if ts.tzinfo is None:
        raise ValueError(f"{ts.isoformat()} has no time zone; give times in UTC, e.g. 2026-11-23T10:00:00Z")
    return ts.astimezone(UTC)


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


def _listing(ids: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" ... {len(ids) - limit} more" if len(ids) > limit else "")


def _hours_text(start: datetime, end: datetime) -> str:
    return f"{start:%Y-%m-%d %H:%M}-{end:%H:%M} UTC" if end - start <= timedelta(days=1) else _range_text(start, end)


def _range_text(start: datetime, end: datetime) -> str:
    fmt = "%H:%M:%S" if start.second or end.second else "%H:%M"
    if start.date() == end.date() or end - start < timedelta(days=1):
        return f"{start:%Y-%m-%d} {start.strftime(fmt)}-{end.strftime(fmt)}"
    return f"{start:%Y-%m-%d %H:%M}-{end:%Y-%m-%d %H:%M}"


def _merge_ranges(ranges: Iterable[BackfillRange]) -> list[BackfillRange]:
    merged: list[BackfillRange] = []
    for r in sorted(ranges, key=lambda b: (b.target, b.start)):
        if merged and merged[-1].target == r.target and r.start <= merged[-1].end:
            merged[-1] = replace(merged[-1], end=max(merged[-1].end, r.end))
        else:
            merged.append(r)
    return merged
