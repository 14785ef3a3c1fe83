"""The log dashboard's time ranges, query bodies and chart data, from canned answers (no server).

The same search against a real ES-API server, with known documents and exact numbers, is in
tests/integration/test_log_dashboard.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tributary.catalog import APP_LOGS
from tributary.log_dashboard import (
    MAX_POINTS,
    NO_AGENT,
    PRESETS,
    REST,
    TimeRange,
    bucket_interval,
    chart_data,
    custom_range,
    dashboard_query,
    error_rates,
    heatmap,
    preset_range,
    requests_over_time_agg,
    requests_per_minute,
    summary,
    top_endpoints,
    user_agents,
)

NOW = datetime(2026, 3, 2, 10, 0, 7, 654_321, tzinfo=UTC)  # a Monday
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
T0_MS = int(T0.timestamp()) * 1000
MINUTE_MS = 60_000
PATTERN = APP_LOGS.indices["logs"].pattern


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


# ---------------------------------------------------------------------------------- time ranges


@pytest.mark.parametrize(
    ("name", "span", "interval_s", "buckets"),
    [("15m", 900, 30, 30), ("1h", 3600, 60, 60), ("6h", 21600, 300, 72), ("24h", 86400, 900, 96)],
)
def test_presets_end_now_in_whole_seconds_with_whole_buckets(
    name: str, span: int, interval_s: int, buckets: int
) -> None:
    time_range = preset_range(name, now=NOW)
    assert time_range.end == datetime(2026, 3, 2, 10, 0, 7, tzinfo=UTC)
    assert (time_range.end - time_range.start).total_seconds() == span
    assert (time_range.interval_s, time_range.preset) == (interval_s, name)
    assert [length for _, length in time_range.buckets()] == [interval_s] * buckets


def test_every_preset_has_a_label_in_the_catalog_order() -> None:
    assert list(PRESETS) == ["15m", "1h", "6h", "24h"]


def test_an_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown range '2h'; use one of 15m, 1h, 6h, 24h"):
        preset_range("2h", now=NOW)


def test_custom_range_picks_a_bucket_width_for_at_most_max_points() -> None:
    assert bucket_interval(timedelta(minutes=5)) == 10
    assert bucket_interval(timedelta(hours=1)) == 60  # as the preset
    assert bucket_interval(timedelta(days=2)) == 1800
    assert bucket_interval(timedelta(days=31)) == 43200
    for hours in (1, 3, 7, 25, 24 * 9):
        span = timedelta(hours=hours)
        assert span.total_seconds() / bucket_interval(span) <= MAX_POINTS


def test_custom_range_in_utc_with_a_short_last_bucket() -> None:
    start = datetime.fromisoformat("2026-03-02T12:00:00+02:00")  # 10:00 UTC
    time_range = custom_range(start, start + timedelta(minutes=2, seconds=30), interval_s=60)
    assert time_range.start == T0 and time_range.start.tzinfo == UTC
    assert time_range.buckets() == [(T0_MS, 60.0), (T0_MS + MINUTE_MS, 60.0), (T0_MS + 2 * MINUTE_MS, 30.0)]
    assert time_range.to_json() == {
        "preset": None,
        "start": "2026-03-02T10:00:00Z",
        "end": "2026-03-02T10:02:30Z",
        "interval_s": 60,
        "buckets": 3,
    }


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (datetime(2026, 3, 2, 10), datetime(2026, 3, 2, 11), "has no UTC offset"),
        (T0, T0, "the range is empty"),
        (T0, T0 - timedelta(hours=1), "is not after start"),
        (T0, T0 + timedelta(days=32), "longer than 31 days"),
    ],
)
def test_custom_range_refuses_what_cannot_be_drawn(start: datetime, end: datetime, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        custom_range(start, end)


# ---------------------------------------------------------------------------------- queries


def test_the_query_counts_hits_exactly_and_returns_no_documents() -> None:
    body = dashboard_query(TimeRange(T0, T0 + timedelta(hours=1), 60))
    assert (body["size"], body["track_total_hits"]) == (0, True)
    [range_filter] = body["query"]["bool"]["filter"]
    assert range_filter == {
        "range": {"timestamp": {"gte": T0_MS, "lt": T0_MS + 60 * MINUTE_MS, "format": "epoch_millis"}}
    }
    assert set(body["aggs"]) == {
        "over_time",
        "endpoints",
        "heatmap",
        "agent_browser",
        "agent_os",
        "agent_device",
        "status",
        "latency",
        "clients",
    }
    assert body["aggs"]["endpoints"]["multi_terms"]["terms"] == [{"field": "method"}, {"field": "path_template"}]
    assert body["aggs"]["agent_browser"]["terms"] == {"field": "browser", "size": 10, "missing": NO_AGENT}
    assert body["aggs"]["heatmap"]["terms"]["size"] == 7
    assert body["aggs"]["heatmap"]["aggs"]["hours"]["terms"]["size"] == 24


def test_buckets_start_at_the_range_start_not_at_the_epoch() -> None:
    aligned = requests_over_time_agg(TimeRange(T0, T0 + timedelta(hours=1), 60))
    assert aligned["date_histogram"] == {"field": "timestamp", "fixed_interval": "60s"}
    shifted = requests_over_time_agg(preset_range("1h", now=NOW))  # ends 10:00:07
    assert shifted["date_histogram"] == {"field": "timestamp", "fixed_interval": "60s", "offset": "+7000ms"}
    assert shifted["aggs"]["status"] == {
        "filters": {"filters": {"4xx": {"term": {"status_class": "4xx"}}, "5xx": {"term": {"status_class": "5xx"}}}}
    }


def test_every_field_the_query_reads_is_in_the_app_logs_mapping() -> None:
    mapped = set(APP_LOGS.indices["logs"].mappings["properties"])
    fields: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "field":
                    fields.add(value)
                elif key in {"term", "range"}:
                    fields.update(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(dashboard_query(preset_range("1h", now=NOW)))
    assert fields and fields <= mapped, fields - mapped


# ---------------------------------------------------------------------------------- chart data

# Two of three one-minute buckets answered (the server leaves out the empty middle one).
OVER_TIME = {
    "over_time": {
        "buckets": [
            {"key": T0_MS, "doc_count": 10, "status": {"buckets": {"4xx": {"doc_count": 2}, "5xx": {"doc_count": 1}}}},
            {
                "key": T0_MS + 2 * MINUTE_MS,
                "doc_count": 3,
                "status": {"buckets": {"4xx": {"doc_count": 0}, "5xx": {"doc_count": 3}}},
            },
        ]
    }
}
THREE_MINUTES = TimeRange(T0, T0 + timedelta(minutes=3), 60)


def test_requests_per_minute_fill_empty_buckets_with_zero() -> None:
    assert requests_per_minute(OVER_TIME, THREE_MINUTES) == [
        [T0_MS, 10.0],
        [T0_MS + MINUTE_MS, 0.0],
        [T0_MS + 2 * MINUTE_MS, 3.0],
    ]


def test_requests_per_minute_scale_with_the_bucket_length() -> None:
    half_minutes = TimeRange(T0, T0 + timedelta(seconds=75), 30)  # 30 s, 30 s, then 15 s
    aggs = {"over_time": {"buckets": [{"key": T0_MS, "doc_count": 4}, {"key": T0_MS + 60_000, "doc_count": 5}]}}
    assert requests_per_minute(aggs, half_minutes) == [[T0_MS, 8.0], [T0_MS + 30_000, 0.0], [T0_MS + 60_000, 20.0]]


def test_error_rates_are_shares_and_gaps_where_there_were_no_requests() -> None:
    assert error_rates(OVER_TIME, THREE_MINUTES) == {
        "4xx": [[T0_MS, 20.0], [T0_MS + MINUTE_MS, None], [T0_MS + 2 * MINUTE_MS, 0.0]],
        "5xx": [[T0_MS, 10.0], [T0_MS + MINUTE_MS, None], [T0_MS + 2 * MINUTE_MS, 100.0]],
    }


def test_top_endpoints_with_error_share_and_latency() -> None:
    aggs = {
        "endpoints": {
            "buckets": [
                {
                    "key": ["GET", "/api/items/{id}"],
                    "doc_count": 3,
                    "status": {"buckets": {"4xx": {"doc_count": 1}, "5xx": {"doc_count": 0}}},
                    "latency": {"value": 12.3456},
                },
                {"key": ["POST", "/login"], "doc_count": 1, "latency": {"value": None}},
            ]
        }
    }
    assert top_endpoints(aggs) == [
        {
            "method": "GET",
            "path_template": "/api/items/{id}",
            "requests": 3,
            "errors_4xx": 1,
            "errors_5xx": 0,
            "error_pct": 33.33,
            "avg_latency_ms": 12.346,
        },
        {
            "method": "POST",
            "path_template": "/login",
            "requests": 1,
            "errors_4xx": 0,
            "errors_5xx": 0,
            "error_pct": 0.0,
            "avg_latency_ms": None,
        },
    ]


def test_user_agents_add_up_to_the_requests_with_an_other_entry() -> None:
    aggs = {
        "agent_browser": {
            "buckets": [{"key": "Chrome", "doc_count": 5}, {"key": NO_AGENT, "doc_count": 1}],
            "sum_other_doc_count": 4,
        },
        "agent_os": {"buckets": [{"key": "Linux", "doc_count": 10}], "sum_other_doc_count": 0},
    }
    assert user_agents(aggs) == {
        "browser": [{"name": "Chrome", "count": 5}, {"name": NO_AGENT, "count": 1}, {"name": REST, "count": 4}],
        "os": [{"name": "Linux", "count": 10}],
        "device": [],
    }


def test_heatmap_is_a_full_week_of_hours() -> None:
    aggs = {
        "heatmap": {
            "buckets": [
                {"key": 1, "hours": {"buckets": [{"key": 10, "doc_count": 4}, {"key": 23, "doc_count": 1}]}},
                {"key": 7, "hours": {"buckets": [{"key": 0, "doc_count": 2}]}},
                {"key": 9, "hours": {"buckets": [{"key": 0, "doc_count": 99}]}},  # not a weekday: ignored
            ]
        }
    }
    data = heatmap(aggs)
    assert data["weekdays"] == ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
    assert data["hours"] == list(range(24))
    assert len(data["counts"]) == 7 and all(len(row) == 24 for row in data["counts"])
    assert (data["counts"][0][10], data["counts"][0][23], data["counts"][6][0], data["max"]) == (4, 1, 2, 4)
    assert sum(map(sum, data["counts"])) == 7


def test_summary_shares_and_an_empty_range() -> None:
    aggs = {
        "status": {"buckets": {"4xx": {"doc_count": 3}, "5xx": {"doc_count": 1}}},
        "latency": {"value": 20.0},
        "clients": {"value": 4},
    }
    assert summary(aggs, 8) == {
        "requests": 8,
        "errors_4xx": 3,
        "errors_5xx": 1,
        "error_4xx_pct": 37.5,
        "error_5xx_pct": 12.5,
        "avg_latency_ms": 20.0,
        "unique_clients": 4,
    }
    assert summary({}, 0)["error_4xx_pct"] is None


def test_an_answer_without_aggregations_gives_empty_charts_over_the_whole_range() -> None:
    # What a search that matched no index may answer (no `aggregations` at all).
    data = chart_data({"hits": {"total": {"value": 0, "relation": "eq"}, "hits": []}}, THREE_MINUTES, PATTERN)
    assert data["total"] == 0 and data["index_pattern"] == PATTERN
    assert data["requests_per_minute"] == [[T0_MS + i * MINUTE_MS, 0.0] for i in range(3)]
    assert data["error_rates"]["5xx"] == [[T0_MS + i * MINUTE_MS, None] for i in range(3)]
    assert data["top_endpoints"] == [] and data["user_agents"] == {"browser": [], "os": [], "device": []}
    assert data["heatmap"]["max"] == 0
    assert data["range"]["start"] == "2026-03-02T10:00:00Z"
