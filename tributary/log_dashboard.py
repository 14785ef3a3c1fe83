"""The app-logs dashboard: one Elasticsearch search over the daily `tributary-app-logs-*` indices,
and the plain chart data (lists and numbers) the five views are drawn from.

    time_range = preset_range("1h")                      # or custom_range(start, end)
    data = dashboard_data(es_client(settings), time_range)
    data["requests_per_minute"]                          # [[bucket start (epoch ms), requests/min], ...]

The views, all over the same range [start, end):

- **requests per minute**: a date histogram; each bucket's count over its length in minutes,
  so the unit stays "per minute" whatever the bucket width;
- **4xx and 5xx rate**: the share (%) of each bucket's requests with that `status_class`;
  None for a bucket without requests (a gap, not a 0 % that was never measured);
- **top endpoints**: the 10 busiest (method, path template) pairs with their 4xx / 5xx counts,
  error share and mean latency;
- **user agents**: requests per browser, OS and device class;
- **hour of day x weekday**: a 7 x 24 matrix of request counts (from the documents' own
  `hour_of_day` and `weekday` fields, which the streaming job derives from the event time in UTC).

Buckets start at the range's start (`offset`), not at the epoch, so every bucket of a preset
range is whole and a rate is never diluted by a half-empty first bucket. The x values are the
buckets' start times in epoch milliseconds, which is what ECharts' time axis takes.

Works on Elasticsearch 8 and on the embedded osmem server alike: only `date_histogram`
(fixed_interval, offset), `filters`, `terms` (with `missing`), `multi_terms`, `avg` and
`cardinality` are used (no scripts, no percentiles, whose estimates differ between servers), and every gap (an empty bucket, a missing index, a missing aggregation in
the answer to a search that matched no index) is filled here rather than left to the server.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from elasticsearch import Elasticsearch

from tributary.catalog import APP_LOGS, Index

LOGS_INDEX: Index = APP_LOGS.indices["logs"]

# Presets of the page's range selector: span and bucket width, chosen for 30-100 points.
PRESETS: Mapping[str, tuple[timedelta, int]] = {
    "15m": (timedelta(minutes=15), 30),
    "1h": (timedelta(hours=1), 60),
    "6h": (timedelta(hours=6), 300),
    "24h": (timedelta(hours=24), 900),
}
DEFAULT_PRESET = "1h"
# Bucket widths for custom ranges, smallest first; each divides a day, so buckets keep their
# wall-clock phase from one day to the next.
NICE_INTERVALS_S = (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
MAX_POINTS = 100
# A custom range longer than this is refused: the indices only keep `retention_days` anyway.
MAX_SPAN = timedelta(days=31)

TOP_ENDPOINTS = 10
TOP_AGENTS = 10
ERROR_CLASSES = ("4xx", "5xx")
# Lines without a user agent have no browser/os/device field (the job keeps "Other" for agents it
# cannot classify); the parentheses keep these two synthetic entries apart from real values.
NO_AGENT = "(no user agent)"
REST = "(all others)"
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")  # `weekday` 1..7 (ISO)
HOURS = tuple(range(24))
USER_AGENT_FIELDS = ("browser", "os", "device")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class TimeRange:
    """[start, end) in UTC, in whole seconds, cut into buckets of `interval_s` from `start` on.

    The last bucket of a custom range may be shorter than `interval_s` (it ends at `end`).
    """

    start: datetime
    end: datetime
    interval_s: int
    preset: str | None = None

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value: datetime = getattr(self, name)
            if value.tzinfo is None:
                raise ValueError(f"{name} {value.isoformat()} has no UTC offset; give e.g. 2026-03-02T10:00:00Z")
        if self.end <= self.start:
            raise ValueError(
                f"the range is empty: end {self.end.isoformat()} is not after start {self.start.isoformat()}"
            )
        if self.end - self.start > MAX_SPAN:
            raise ValueError(f"the range is longer than {MAX_SPAN.days} days; pick a shorter one")
        if self.interval_s < 1:
            raise ValueError(f"interval_s is {self.interval_s}; buckets are at least 1 s wide")

    @property
    def start_ms(self) -> int:
        return _epoch_ms(self.start)

    @property
    def end_ms(self) -> int:
        return _epoch_ms(self.end)

    @property
    def interval_ms(self) -> int:
        return self.interval_s * 1000

    def buckets(self) -> list[tuple[int, float]]:
        """(start in epoch ms, length in seconds) of every bucket, in order."""
        starts = range(self.start_ms, self.end_ms, self.interval_ms)
        return [(s, (min(s + self.interval_ms, self.end_ms) - s) / 1000) for s in starts]

    def to_json(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "start": self.start.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "end": self.end.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "interval_s": self.interval_s,
            "buckets": len(self.buckets()),
        }


def _epoch_ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


def _whole_seconds_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"{moment.isoformat()} has no UTC offset; give e.g. 2026-03-02T10:00:00Z")
    return moment.astimezone(UTC).replace(microsecond=0)


def bucket_interval(span: timedelta) -> int:
    """The smallest width of NICE_INTERVALS_S that cuts `span` into at most MAX_POINTS buckets."""
    for interval_s in NICE_INTERVALS_S:
        if math.ceil(span.total_seconds() / interval_s) <= MAX_POINTS:
            return interval_s
    return NICE_INTERVALS_S[-1]


def preset_range(name: str, now: datetime | None = None) -> TimeRange:
    """The last 15 min / 1 h / 6 h / 24 h up to `now` (default: the current second)."""
    try:
        span, interval_s = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown range {name!r}; use one of {', '.join(PRESETS)} or a custom start and end") from None
    end = _whole_seconds_utc(now or datetime.now(UTC))
    return TimeRange(end - span, end, interval_s, preset=name)


def custom_range(start: datetime, end: datetime, interval_s: int | None = None) -> TimeRange:
    """[start, end) with a bucket width from `bucket_interval` unless given."""
    start, end = _whole_seconds_utc(start), _whole_seconds_utc(end)
    return TimeRange(start, end, interval_s or bucket_interval(end - start))


# ---------------------------------------------------------------------------------- queries


def _status_class_filters() -> dict[str, Any]:
    return {"filters": {"filters": {c: {"term": {"status_class": c}} for c in ERROR_CLASSES}}}


def time_filter(time_range: TimeRange) -> dict[str, Any]:
    """The query: documents whose `timestamp` is in [start, end)."""
    return {
        "bool": {
            "filter": [
                {
                    "range": {
                        "timestamp": {"gte": time_range.start_ms, "lt": time_range.end_ms, "format": "epoch_millis"}
                    }
                }
            ]
        }
    }


def requests_over_time_agg(time_range: TimeRange) -> dict[str, Any]:
    """Date histogram of requests, with the 4xx and 5xx count of each bucket (views 1 and 2)."""
    histogram: dict[str, Any] = {"field": "timestamp", "fixed_interval": f"{time_range.interval_s}s"}
    offset_ms = time_range.start_ms % time_range.interval_ms
    if offset_ms:
        histogram["offset"] = f"+{offset_ms}ms"
    return {"date_histogram": histogram, "aggs": {"status": _status_class_filters()}}


def top_endpoints_agg(size: int = TOP_ENDPOINTS) -> dict[str, Any]:
    """The busiest (method, path template) pairs with their errors and mean latency (view 3)."""
    return {
        "multi_terms": {
            "terms": [{"field": "method"}, {"field": "path_template"}],
            "size": size,
        },
        "aggs": {"status": _status_class_filters(), "latency": {"avg": {"field": "latency_ms"}}},
    }


def user_agent_aggs(size: int = TOP_AGENTS) -> dict[str, Any]:
    """Requests per browser, OS and device class (view 4)."""
    return {
        f"agent_{field}": {"terms": {"field": field, "size": size, "missing": NO_AGENT}} for field in USER_AGENT_FIELDS
    }


def heatmap_agg() -> dict[str, Any]:
    """Requests per weekday and hour of day (view 5); sizes cover every value, so counts are exact."""
    return {
        "terms": {"field": "weekday", "size": len(WEEKDAYS)},
        "aggs": {"hours": {"terms": {"field": "hour_of_day", "size": len(HOURS)}}},
    }


def summary_aggs() -> dict[str, Any]:
    return {
        "status": _status_class_filters(),
        "latency": {"avg": {"field": "latency_ms"}},
        "clients": {"cardinality": {"field": "client_ip"}},
    }


def dashboard_query(time_range: TimeRange) -> dict[str, Any]:
    """The body of the one search behind every view (`size` 0: aggregations only)."""
    return {
        "size": 0,
        "track_total_hits": True,
        "query": time_filter(time_range),
        "aggs": {
            "over_time": requests_over_time_agg(time_range),
            "endpoints": top_endpoints_agg(),
            "heatmap": heatmap_agg(),
            **user_agent_aggs(),
            **summary_aggs(),
        },
    }


# ---------------------------------------------------------------------------------- chart data


def _buckets(aggs: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    buckets: list[dict[str, Any]] = (aggs.get(name) or {}).get("buckets") or []
    return buckets


def _status_counts(bucket: Mapping[str, Any]) -> dict[str, int]:
    found = (bucket.get("status") or {}).get("buckets") or {}
    return {c: int((found.get(c) or {}).get("doc_count", 0)) for c in ERROR_CLASSES}


def _pct(part: int, whole: int) -> float | None:
    return None if whole == 0 else round(100.0 * part / whole, 2)


def _counts_by_bucket(aggs: Mapping[str, Any], time_range: TimeRange) -> list[tuple[int, float, int, dict[str, int]]]:
    """(start ms, length s, requests, {class: count}) for every bucket of the range, empty ones too."""
    found = {int(b["key"]): b for b in _buckets(aggs, "over_time")}
    rows = []
    for start_ms, length_s in time_range.buckets():
        bucket = found.get(start_ms) or {}
        rows.append((start_ms, length_s, int(bucket.get("doc_count", 0)), _status_counts(bucket)))
    return rows


def requests_per_minute(aggs: Mapping[str, Any], time_range: TimeRange) -> list[list[float]]:
    """[[bucket start ms, requests per minute], ...] over the whole range."""
    return [[start_ms, count * 60 / length_s] for start_ms, length_s, count, _ in _counts_by_bucket(aggs, time_range)]


def error_rates(aggs: Mapping[str, Any], time_range: TimeRange) -> dict[str, list[list[float | None]]]:
    """{"4xx": [[bucket start ms, % of requests or None], ...], "5xx": [...]}."""
    rows = _counts_by_bucket(aggs, time_range)
    return {c: [[start_ms, _pct(errors[c], count)] for start_ms, _, count, errors in rows] for c in ERROR_CLASSES}


def top_endpoints(aggs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The busiest endpoints, busiest first, each with its errors, error share and mean latency."""
    endpoints = []
    for bucket in _buckets(aggs, "endpoints"):
        method, path_template = bucket["key"]
        requests = int(bucket["doc_count"])
        errors = _status_counts(bucket)
        latency = (bucket.get("latency") or {}).get("value")
        endpoints.append(
            {
                "method": str(method),
                "path_template": str(path_template),
                "requests": requests,
                "errors_4xx": errors["4xx"],
                "errors_5xx": errors["5xx"],
                "error_pct": _pct(errors["4xx"] + errors["5xx"], requests),
                "avg_latency_ms": None if latency is None else round(float(latency), 3),
            }
        )
    return endpoints


def user_agents(aggs: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """{"browser": [{"name", "count"}, ...], "os": [...], "device": [...]}, largest first.

    Values beyond the top TOP_AGENTS are summed into one REST entry, so each list adds up to the
    number of requests; lines without a user agent count as NO_AGENT.
    """
    distribution: dict[str, list[dict[str, Any]]] = {}
    for field in USER_AGENT_FIELDS:
        agg = aggs.get(f"agent_{field}") or {}
        entries = [{"name": str(b["key"]), "count": int(b["doc_count"])} for b in agg.get("buckets") or []]
        other = int(agg.get("sum_other_doc_count") or 0)
        if other:
            entries.append({"name": REST, "count": other})
        distribution[field] = entries
    return distribution


def heatmap(aggs: Mapping[str, Any]) -> dict[str, Any]:
    """{"weekdays": [Mon..Sun], "hours": [0..23], "counts": 7 rows of 24 counts, "max": n}."""
    counts = [[0] * len(HOURS) for _ in WEEKDAYS]
    for day in _buckets(aggs, "heatmap"):
        weekday = int(day["key"])
        if not 1 <= weekday <= len(WEEKDAYS):
            continue  # not a valid ISO weekday: the mapping allows any integer
        for hour_bucket in (day.get("hours") or {}).get("buckets") or []:
            hour = int(hour_bucket["key"])
            if hour in HOURS:
                counts[weekday - 1][hour] += int(hour_bucket["doc_count"])
    return {
        "weekdays": list(WEEKDAYS),
        "hours": list(HOURS),
        "counts": counts,
        "max": max(max(row) for row in counts),
    }


def summary(aggs: Mapping[str, Any], total: int) -> dict[str, Any]:
    """Totals of the range: requests, 4xx/5xx counts and shares, mean latency, distinct clients.

    `unique_clients` is Elasticsearch's `cardinality`: exact up to 3000 distinct values, an
    estimate beyond.
    """
    errors = _status_counts(aggs)
    latency = (aggs.get("latency") or {}).get("value")
    return {
        "requests": total,
        "errors_4xx": errors["4xx"],
        "errors_5xx": errors["5xx"],
        "error_4xx_pct": _pct(errors["4xx"], total),
        "error_5xx_pct": _pct(errors["5xx"], total),
        "avg_latency_ms": None if latency is None else round(float(latency), 3),
        "unique_clients": int((aggs.get("clients") or {}).get("value") or 0),
    }


def _total_hits(response: Mapping[str, Any]) -> int:
    total = (response.get("hits") or {}).get("total") or 0
    return int(total["value"] if isinstance(total, Mapping) else total)


def chart_data(response: Mapping[str, Any], time_range: TimeRange, index_pattern: str) -> dict[str, Any]:
    """Everything the page draws, from the answer to `dashboard_query(time_range)`."""
    aggs: Mapping[str, Any] = response.get("aggregations") or {}
    total = _total_hits(response)
    return {
        "range": time_range.to_json(),
        "index_pattern": index_pattern,
        "total": total,
        "summary": summary(aggs, total),
        "requests_per_minute": requests_per_minute(aggs, time_range),
        "error_rates": error_rates(aggs, time_range),
        "top_endpoints": top_endpoints(aggs),
        "user_agents": user_agents(aggs),
        "heatmap": heatmap(aggs),
    }


def dashboard_data(es: Elasticsearch, time_range: TimeRange, index: Index = LOGS_INDEX) -> dict[str, Any]:
    """Run the dashboard's search over every daily index of `index` and return `chart_data`.

    No index for the range (nothing indexed yet, or all expired) gives empty charts, not an error.
    Errors of the client (server unreachable, authentication) propagate.
    """
    body = dashboard_query(time_range)
    response = es.search(index=index.pattern, ignore_unavailable=True, allow_no_indices=True, **body)
    return chart_data(response.body, time_range, index.pattern)
