"""The log dashboard's search against the session's real ES-API server (osmem), and its JSON route.

Known documents go into the catalog's daily `tributary-app-logs-*` indices (template installed
first, bulk `create` as the streaming job writes them) on days of 2030 that no other test uses;
the indices are deleted afterwards. Every number the charts would show is asserted exactly.
The route is served by the page app mounted as the api-server mounts it, with Airflow's
`get_user` stood in for where a signed-in user is needed (the real check runs in
tests/integration/test_dashboard_page.py inside Airflow).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from elasticsearch import Elasticsearch
from fastapi.testclient import TestClient
from tributary_plugin import TributaryPlugin

from tests.integration.page_clients import mounted, signed_in_as_viewer
from tributary.catalog import APP_LOGS, Index
from tributary.clients import es_client
from tributary.log_dashboard import LOGS_INDEX, NO_AGENT, custom_range, dashboard_data, preset_range
from tributary.provisioning import ensure_index_templates
from tributary.settings import Settings, load_settings
from tributary.stack.ports import free_port
from tributary_airflow.ui.dashboard_page import PAGE, app

pytestmark = pytest.mark.integration

PREFIX = PAGE.url_prefix  # /tributary/dashboard
GUARDED_PATHS = (
    "/",
    "/api/dashboard",
    "/static/dashboard.js",
    "/static/dashboard.css",
    "/static/vendor/echarts.min.js",
)

MONDAY = datetime(2030, 1, 7, tzinfo=UTC)
WINDOW_START = MONDAY.replace(hour=10)  # the five minutes most documents fall in
MINUTE_MS = 60_000


@dataclass(frozen=True)
class LogLine:
    at: str  # HH:MM:SS on MONDAY, or a full ISO timestamp
    method: str
    path_template: str
    status: int
    browser: str | None
    os: str | None
    device: str | None
    latency_ms: float
    client_ip: str

    @property
    def timestamp(self) -> datetime:
        if "T" in self.at:
            return datetime.fromisoformat(self.at)
        hour, minute, second = map(int, self.at.split(":"))
        return MONDAY.replace(hour=hour, minute=minute, second=second)


ITEMS, ORDERS, HEALTH = "/api/items/{id}", "/api/orders", "/health"
LINES = (
    # Just outside [10:00, 10:05) on either side.
    LogLine("09:59:59", "GET", HEALTH, 200, "Safari", "macOS", "desktop", 1.0, "10.0.0.6"),
    LogLine("10:05:00", "GET", HEALTH, 500, "Safari", "macOS", "desktop", 1.0, "10.0.0.6"),
    # Minute 0: 4 requests, one 404, one 500.
    LogLine("10:00:00", "GET", ITEMS, 200, "Chrome", "Linux", "desktop", 10.0, "10.0.0.1"),
    LogLine("10:00:15", "GET", ITEMS, 200, "Firefox", "Windows", "desktop", 20.0, "10.0.0.2"),
    LogLine("10:00:30", "GET", ITEMS, 404, "Chrome", "Android", "mobile", 30.0, "10.0.0.3"),
    LogLine("10:00:45", "POST", ORDERS, 500, "Safari", "iOS", "mobile", 400.0, "10.0.0.4"),
    # Minute 1: nothing. Minute 2: 2 requests, one 503, one without a user agent.
    LogLine("10:02:10", "POST", ORDERS, 200, "Chrome", "Linux", "desktop", 100.0, "10.0.0.1"),
    LogLine("10:02:20", "POST", ORDERS, 503, None, None, None, 50.0, "10.0.0.5"),
    # Minute 3: 5 requests, one 301, one 404.
    LogLine("10:03:00", "GET", ITEMS, 200, "Chrome", "Linux", "desktop", 5.0, "10.0.0.1"),
    LogLine("10:03:10", "GET", ITEMS, 200, "Chrome", "Windows", "desktop", 15.0, "10.0.0.2"),
    LogLine("10:03:20", "GET", HEALTH, 200, "Safari", "macOS", "desktop", 1.0, "10.0.0.6"),
    LogLine("10:03:30", "GET", "/old", 301, "Firefox", "Windows", "desktop", 2.0, "10.0.0.2"),
    LogLine("10:03:40", "GET", ITEMS, 404, "Chrome", "Linux", "desktop", 8.0, "10.0.0.1"),
    # Minute 4: one request in its last second.
    LogLine("10:04:59", "GET", HEALTH, 200, "Safari", "macOS", "desktop", 1.0, "10.0.0.6"),
    # Other days of the week (and other daily indices): Tuesday 23:xx, Sunday 00:xx twice.
    LogLine("2030-01-08T23:30:00+00:00", "GET", HEALTH, 200, "Chrome", "Linux", "desktop", 1.0, "10.0.0.7"),
    LogLine("2030-01-13T00:15:00+00:00", "GET", HEALTH, 200, "Chrome", "Linux", "desktop", 1.0, "10.0.0.7"),
    LogLine("2030-01-13T00:45:00+00:00", "GET", HEALTH, 404, "Chrome", "Linux", "desktop", 1.0, "10.0.0.7"),
)
DAILY_INDICES = sorted({LOGS_INDEX.index_for(line.timestamp.date()) for line in LINES})


def document(line: LogLine, offset: int) -> dict[str, Any]:
    """A document as the app_logs job indexes it (strict mapping: only mapped fields)."""
    ts = line.timestamp
    doc: dict[str, Any] = {
        "topic": APP_LOGS.topic.name,
        "kafka_partition": 0,
        "kafka_offset": offset,
        "timestamp": ts.isoformat().replace("+00:00", "Z"),
        "client_ip": line.client_ip,
        "method": line.method,
        "path": line.path_template.replace("{id}", str(offset)),
        "path_template": line.path_template,
        "status": line.status,
        "status_class": f"{line.status // 100}xx",
        "latency_ms": line.latency_ms,
        "bytes": 100 + offset,
        "referrer": "-",
        "user_agent": f"test-agent/{line.browser}",
        "hour_of_day": ts.hour,
        "weekday": ts.isoweekday(),
        "source_format": "combined",
    }
    for field in ("browser", "os", "device"):
        value = getattr(line, field)
        if value is not None:  # a line without a user agent leaves the fields out
            doc[field] = value
    return doc


def index_lines(
    es: Elasticsearch, lines: Sequence[LogLine], *, first_offset: int = 0, index: Index = LOGS_INDEX
) -> list[str]:
    """Put the family's template, bulk-create `lines` (refresh), return the daily indices written.

    Each line's Kafka offset (hence its `_id`) is `first_offset` plus its position.
    """
    ensure_index_templates(es, [index])
    operations: list[dict[str, Any]] = []
    for offset, line in enumerate(lines, start=first_offset):
        name = index.index_for(line.timestamp.date())
        operations.append({"create": {"_index": name, "_id": f"{APP_LOGS.topic.name}-0-{offset}"}})
        operations.append(document(line, offset))
    response = es.bulk(operations=operations, refresh=True)
    assert not response["errors"], [item for item in response["items"] if "error" in item["create"]][:3]
    return sorted({index.index_for(line.timestamp.date()) for line in lines})


def es_settings(es_url: str) -> Settings:
    return replace(load_settings(), es_url=es_url, embedded_es=False, es_plain_json=True, es_username="")


@pytest.fixture(scope="module")
def es(es_url: str) -> Iterator[Elasticsearch]:
    """A client of the session's osmem with LINES indexed; their daily indices are deleted afterwards."""
    client = es_client(es_settings(es_url))
    written = index_lines(client, LINES)
    assert written == DAILY_INDICES
    try:
        yield client
    finally:
        for name in written:
            client.options(ignore_status=404).indices.delete(index=name)
        client.close()


# ---------------------------------------------------------------------------------- queries


def test_five_minutes_give_exact_rates_endpoints_agents_and_heatmap(es: Elasticsearch) -> None:
    window = custom_range(WINDOW_START, WINDOW_START + timedelta(minutes=5), interval_s=60)
    data = dashboard_data(es, window)
    t0 = int(WINDOW_START.timestamp()) * 1000
    minutes = [t0 + i * MINUTE_MS for i in range(5)]

    assert data["total"] == 12
    assert data["summary"] == {
        "requests": 12,
        "errors_4xx": 2,
        "errors_5xx": 2,
        "error_4xx_pct": 16.67,
        "error_5xx_pct": 16.67,
        "avg_latency_ms": 53.5,  # 642 ms / 12
        "unique_clients": 6,
    }
    assert data["requests_per_minute"] == [[m, n] for m, n in zip(minutes, [4.0, 0.0, 2.0, 5.0, 1.0], strict=True)]
    assert data["error_rates"] == {
        "4xx": [[m, p] for m, p in zip(minutes, [25.0, None, 0.0, 20.0, 0.0], strict=True)],
        "5xx": [[m, p] for m, p in zip(minutes, [25.0, None, 50.0, 0.0, 0.0], strict=True)],
    }
    assert data["top_endpoints"] == [
        {
            "method": "GET",
            "path_template": ITEMS,
            "requests": 6,
            "errors_4xx": 2,
            "errors_5xx": 0,
            "error_pct": 33.33,
            "avg_latency_ms": 14.667,  # 88 ms / 6
        },
        {
            "method": "POST",
            "path_template": ORDERS,
            "requests": 3,
            "errors_4xx": 0,
            "errors_5xx": 2,
            "error_pct": 66.67,
            "avg_latency_ms": 183.333,
        },
        {
            "method": "GET",
            "path_template": HEALTH,
            "requests": 2,
            "errors_4xx": 0,
            "errors_5xx": 0,
            "error_pct": 0.0,
            "avg_latency_ms": 1.0,
        },
        {
            "method": "GET",
            "path_template": "/old",
            "requests": 1,
            "errors_4xx": 0,
            "errors_5xx": 0,
            "error_pct": 0.0,
            "avg_latency_ms": 2.0,
        },
    ]
    agents = data["user_agents"]
    # Equal counts may come in any order from a server: compare as mappings, check the ranking.
    assert {e["name"]: e["count"] for e in agents["browser"]} == {"Chrome": 6, "Safari": 3, "Firefox": 2, NO_AGENT: 1}
    assert {e["name"]: e["count"] for e in agents["os"]} == {
        "Linux": 4,
        "Windows": 3,
        "macOS": 2,
        "Android": 1,
        "iOS": 1,
        NO_AGENT: 1,
    }
    assert {e["name"]: e["count"] for e in agents["device"]} == {"desktop": 9, "mobile": 2, NO_AGENT: 1}
    for entries in agents.values():
        counts = [e["count"] for e in entries]
        assert counts == sorted(counts, reverse=True) and sum(counts) == 12
    heat = data["heatmap"]
    assert heat["counts"][0][10] == 12 and heat["max"] == 12 and sum(map(sum, heat["counts"])) == 12


def test_a_week_across_daily_indices_fills_the_heatmap(es: Elasticsearch) -> None:
    week = custom_range(MONDAY, MONDAY + timedelta(days=7))
    data = dashboard_data(es, week)
    assert data["total"] == len(LINES) == 17
    assert data["range"]["interval_s"] == 7200 and data["range"]["buckets"] == 84
    # Rates times bucket lengths give back every request.
    assert sum(rate * 120 for _, rate in data["requests_per_minute"]) == pytest.approx(17)
    counts = data["heatmap"]["counts"]
    cells = {(day, hour): n for day, row in enumerate(counts) for hour, n in enumerate(row) if n}
    assert cells == {(0, 9): 1, (0, 10): 13, (1, 23): 1, (6, 0): 2}
    assert data["summary"]["errors_4xx"] == 3 and data["summary"]["errors_5xx"] == 3


def test_preset_buckets_start_at_the_range_start(es: Elasticsearch) -> None:
    # 15 minutes up to 10:05:07: 30 s buckets from 09:50:07, so 09:59:59 and 10:00:00 share one.
    now = WINDOW_START + timedelta(minutes=5, seconds=7)
    data = dashboard_data(es, preset_range("15m", now=now))
    assert data["total"] == 14
    points = dict((int(t), rate) for t, rate in data["requests_per_minute"])
    assert len(points) == 30
    shared = int((WINDOW_START - timedelta(seconds=23)).timestamp()) * 1000
    assert points[shared] == 4.0  # 2 requests in 30 s
    assert sum(points.values()) / 2 == 14


def test_a_range_without_documents_or_without_indices_gives_empty_charts(es: Elasticsearch) -> None:
    quiet = custom_range(MONDAY.replace(hour=3), MONDAY.replace(hour=4))
    data = dashboard_data(es, quiet)
    assert data["total"] == 0 and len(data["requests_per_minute"]) == 60
    assert {rate for _, rate in data["requests_per_minute"]} == {0.0}
    nothing = replace(LOGS_INDEX, base="tributary-no-such-family")
    data = dashboard_data(es, quiet, index=nothing)
    assert data["total"] == 0 and data["index_pattern"] == "tributary-no-such-family-*"
    assert data["top_endpoints"] == [] and data["heatmap"]["max"] == 0


# ---------------------------------------------------------------------------------- route


@pytest.fixture
def client(es_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The page app mounted under its prefix, with the api-server's settings pointing at osmem."""
    for name in ("TRIBUTARY_ES_USERNAME", "TRIBUTARY_ES_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRIBUTARY_ES_URL", es_url)
    monkeypatch.setenv("TRIBUTARY_EMBEDDED_ES", "0")
    monkeypatch.setenv("TRIBUTARY_ES_PLAIN_JSON", "1")
    with mounted(app, PREFIX) as test_client:
        yield test_client


@pytest.fixture
def signed_in(client: TestClient) -> TestClient:
    """`client` with Airflow's `get_user` answering for a viewer."""
    return signed_in_as_viewer(app, client)


@pytest.mark.parametrize("path", GUARDED_PATHS)
def test_every_route_answers_401_without_a_token(client: TestClient, path: str) -> None:
    response = client.get(PREFIX + path)
    assert response.status_code == 401, response.text
    assert response.json() == {"detail": "Not authenticated"}


def test_no_unguarded_openapi_or_docs_routes(client: TestClient) -> None:
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert client.get(PREFIX + path).status_code == 404


def test_api_answers_the_chart_data_of_a_custom_range(signed_in: TestClient, es: Elasticsearch) -> None:
    response = signed_in.get(
        f"{PREFIX}/api/dashboard", params={"start": "2030-01-07T10:00:00Z", "end": "2030-01-07T10:05:00Z"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    data = response.json()
    assert data["range"] == {
        "preset": None,
        "start": "2030-01-07T10:00:00Z",
        "end": "2030-01-07T10:05:00Z",
        "interval_s": 10,
        "buckets": 30,
    }
    assert data["total"] == 12 and data["index_pattern"] == LOGS_INDEX.pattern
    assert [e["requests"] for e in data["top_endpoints"]] == [6, 3, 2, 1]
    assert set(data) == {
        "range",
        "index_pattern",
        "total",
        "summary",
        "requests_per_minute",
        "error_rates",
        "top_endpoints",
        "user_agents",
        "heatmap",
    }


def test_api_answers_a_preset_range(signed_in: TestClient, es: Elasticsearch) -> None:
    response = signed_in.get(f"{PREFIX}/api/dashboard", params={"range": "15m"})
    assert response.status_code == 200, response.text
    data = response.json()
    assert (data["range"]["preset"], data["range"]["interval_s"], data["range"]["buckets"]) == ("15m", 30, 30)
    assert signed_in.get(f"{PREFIX}/api/dashboard").json()["range"]["preset"] == "1h"  # the default


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"range": "2d"}, "unknown range '2d'"),
        ({"start": "2030-01-07T10:00:00Z"}, "needs both start and end"),
        ({"start": "yesterday", "end": "2030-01-07T10:00:00Z"}, "start='yesterday' is not an ISO 8601 time"),
        ({"start": "2030-01-07T10:00:00", "end": "2030-01-07T11:00:00"}, "has no UTC offset"),
        ({"start": "2030-01-07T10:00:00Z", "end": "2030-01-07T09:00:00Z"}, "the range is empty"),
    ],
)
def test_api_refuses_a_bad_range_with_the_fix(signed_in: TestClient, params: dict[str, str], message: str) -> None:
    response = signed_in.get(f"{PREFIX}/api/dashboard", params=params)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


def test_api_names_the_setting_when_elasticsearch_is_unreachable(
    signed_in: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("TRIBUTARY_ES_URL", closed)
    response = signed_in.get(f"{PREFIX}/api/dashboard", params={"range": "15m"})
    assert response.status_code == 503, response.text
    detail = response.json()["detail"]
    assert f"cannot reach Elasticsearch at {closed}" in detail and "TRIBUTARY_ES_URL" in detail


def test_page_and_assets_for_a_signed_in_user(signed_in: TestClient) -> None:
    page = signed_in.get(f"{PREFIX}/")
    assert page.status_code == 200
    assert f'<base href="{PREFIX}/">' in page.text
    assert '<script src="static/vendor/echarts.min.js" defer></script>' in page.text
    assert '<script src="static/dashboard.js" defer></script>' in page.text
    assert "<script>" not in page.text and "<style" not in page.text and " style=" not in page.text
    assert page.text.count('class="chart"') == 5
    assert '<option value="1h" selected>' in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'self'" in csp and "script-src" not in csp
    script = signed_in.get(f"{PREFIX}/static/dashboard.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "fetch(`api/dashboard?" in script.text  # relative: works under the mount prefix
    assert signed_in.get(f"{PREFIX}/static/dashboard.css").status_code == 200
    assert signed_in.get(f"{PREFIX}/static/dashboard.svg").status_code == 200
    assert signed_in.get(f"{PREFIX}/static/..%2F__init__.py").status_code == 404
    assert signed_in.get(f"{PREFIX}/static/vendor/..%2F..%2Fjobs.js").status_code == 404


def test_plugin_mounts_the_page_and_adds_a_nav_entry() -> None:
    assert {"app": app, "url_prefix": PREFIX, "name": "Tributary log dashboard"} in TributaryPlugin.fastapi_apps
    views = {v["url_route"]: v for v in TributaryPlugin.external_views}
    assert views["tributary-dashboard"]["href"] == "tributary/dashboard/"
    assert views["tributary-dashboard"]["name"] == "Log dashboard"
    assert views["tributary-dashboard"]["icon"] == "tributary/dashboard/static/dashboard.svg"
