"""The "Log dashboard" page: requests per minute, 4xx/5xx rates, top endpoints, user agents and an
hour x weekday heatmap of the app logs indexed in Elasticsearch (`tributary-app-logs-*`).

`GET /` is the page shell; static/dashboard.js draws the charts with the ECharts copy under
static/vendor/ (fetched from npm by scripts/install_js.sh) from `GET /api/dashboard`, and
refreshes them every 15 s while a preset range is selected. `GET /api/dashboard?range=15m|1h|6h|24h`
or `?start=<ISO 8601>&end=<ISO 8601>` answers `tributary.log_dashboard.chart_data` as JSON.
Mounted at /tributary/dashboard/ by the plugin; every route needs a signed-in Airflow user (see
`tributary_airflow.ui`).
"""

from __future__ import annotations

import html
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any

from elasticsearch import ApiError, Elasticsearch, TransportError
from fastapi import HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse

from tributary.clients import es_client
from tributary.compaction_report import ECHARTS_FILE
from tributary.log_dashboard import (
    DEFAULT_PRESET,
    LOGS_INDEX,
    PRESETS,
    TimeRange,
    custom_range,
    dashboard_data,
    preset_range,
)
from tributary.settings import load_settings
from tributary_airflow.ui import CONTENT_SECURITY_POLICY, UIPage, page_app
from tributary_airflow.ui.reports_page import vendor_file

log = logging.getLogger(__name__)

TITLE = "Log dashboard"
REFRESH_S = 15
# The page waits for the search, and the browser refreshes every REFRESH_S: answer well before.
ES_TIMEOUT_S = 10.0

# ECharts writes its tooltips as HTML with style attributes: styles may be inline, scripts may not.
DASHBOARD_CONTENT_SECURITY_POLICY = CONTENT_SECURITY_POLICY + "; style-src 'self' 'unsafe-inline'"

_PRESET_LABELS = {"15m": "Last 15 minutes", "1h": "Last hour", "6h": "Last 6 hours", "24h": "Last 24 hours"}

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<base href="{base}">
<title>{title} · Tributary</title>
<link rel="stylesheet" href="static/tributary.css">
<link rel="stylesheet" href="static/dashboard.css">
<script src="static/vendor/echarts.min.js" defer></script>
<script src="static/dashboard.js" defer></script>
</head>
<body data-refresh-s="{refresh_s}">
<header>
  <h1>{title}</h1>
  <form id="range-form" class="range">
    <label for="range">Time range</label>
    <select id="range" name="range">
{options}
      <option value="custom">Custom…</option>
    </select>
    <span id="custom" class="custom" hidden>
      <label for="start">From</label> <input type="datetime-local" id="start" name="start" step="1">
      <label for="end">to</label> <input type="datetime-local" id="end" name="end" step="1">
      <button type="submit">Apply</button>
    </span>
  </form>
  <p id="status" role="status" class="status">Loading…</p>
</header>
<main>
<dl id="summary" class="facts" hidden></dl>
<p id="empty" class="empty" hidden></p>
<section id="charts" class="charts" aria-label="Charts">
  <figure><figcaption>Requests per minute</figcaption><div class="chart" id="chart-requests" data-chart="requests"></div></figure>
  <figure><figcaption>4xx and 5xx rate (% of requests)</figcaption><div class="chart" id="chart-errors" data-chart="errors"></div></figure>
  <figure class="wide"><figcaption>Top endpoints</figcaption><div class="chart" id="chart-endpoints" data-chart="endpoints"></div></figure>
  <figure class="wide"><figcaption>User agents</figcaption><div class="chart" id="chart-agents" data-chart="agents"></div></figure>
  <figure class="wide"><figcaption>Requests by hour of day and weekday (UTC)</figcaption><div class="chart" id="chart-heatmap" data-chart="heatmap"></div></figure>
</section>
</main>
</body>
</html>
"""

app = page_app(f"Tributary {TITLE.lower()}")
# ECharts is the reports page's copy (static/vendor/), served the same way.
app.add_api_route("/static/vendor/{name}", vendor_file, methods=["GET"], include_in_schema=False)


def _options() -> str:
    return "\n".join(
        f'      <option value="{name}"{" selected" if name == DEFAULT_PRESET else ""}>'
        f"{html.escape(_PRESET_LABELS.get(name, name))}</option>"
        for name in PRESETS
    )


@app.get("/", response_class=HTMLResponse)
def dashboard_page(request: Request) -> HTMLResponse:
    """The page shell; static/dashboard.js fills in the charts."""
    # Relative links resolve against the mount point whether or not the URL ends with '/'.
    base = str(request.scope.get("root_path", "")).rstrip("/") + "/"
    body = _PAGE.format(
        base=html.escape(base, quote=True), title=html.escape(TITLE), refresh_s=REFRESH_S, options=_options()
    )
    if not ECHARTS_FILE.is_file():
        log.warning("%s is missing: the dashboard cannot draw its charts; run scripts/install_js.sh", ECHARTS_FILE)
    return HTMLResponse(
        body, headers={"Content-Security-Policy": DASHBOARD_CONTENT_SECURITY_POLICY, "Cache-Control": "no-store"}
    )


def _moment(name: str, text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise HTTPException(
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"{name}={text!r} is not an ISO 8601 time; give e.g. 2026-03-02T10:00:00Z",
        ) from None


def requested_range(range_name: str | None, start: str | None, end: str | None) -> TimeRange:
    """A preset (`range`), or a custom range when `start` and `end` are given; 422 with the fix."""
    try:
        if start is not None or end is not None:
            if start is None or end is None:
                raise ValueError("a custom range needs both start and end")
            return custom_range(_moment("start", start), _moment("end", end))
        return preset_range(range_name or DEFAULT_PRESET)
    except ValueError as exc:
        raise HTTPException(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc


@contextmanager
def elasticsearch_unavailable_as_503(es_url: str) -> Iterator[None]:
    """An unreachable or refusing Elasticsearch becomes a 503 whose detail names the setting to fix."""
    try:
        yield
    except ApiError as exc:
        hint = "check that TRIBUTARY_ES_URL of the Airflow api-server points at Elasticsearch"
        if exc.meta.status in (401, 403):
            hint = "check TRIBUTARY_ES_USERNAME and TRIBUTARY_ES_PASSWORD of the Airflow api-server"
        elif exc.meta.status == 406:
            hint = "an OpenSearch-compatible server needs TRIBUTARY_ES_PLAIN_JSON=1"
        log.warning("log dashboard: Elasticsearch at %s refused the search: %s", es_url, exc)
        raise HTTPException(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"Elasticsearch at {es_url} refused the search (HTTP {exc.meta.status}: {exc.message}); {hint}",
        ) from exc
    except TransportError as exc:
        log.warning("log dashboard: cannot reach Elasticsearch at %s: %s", es_url, exc)
        raise HTTPException(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"cannot reach Elasticsearch at {es_url} ({exc.message}); check that it is up and that "
            "TRIBUTARY_ES_URL of the Airflow api-server points at it",
        ) from exc


@app.get("/api/dashboard")
def dashboard_json(
    range_name: Annotated[str | None, Query(alias="range")] = None, start: str | None = None, end: str | None = None
) -> JSONResponse:
    """The charts' data for a preset (`range`) or custom (`start`, `end`) time range."""
    time_range = requested_range(range_name, start, end)
    settings = load_settings()
    es: Elasticsearch = es_client(settings, request_timeout=ES_TIMEOUT_S)
    try:
        with elasticsearch_unavailable_as_503(settings.es_url):
            data: dict[str, Any] = dashboard_data(es, time_range, LOGS_INDEX)
    finally:
        es.close()
    return JSONResponse(data, headers={"Cache-Control": "no-store"})


PAGE = UIPage(slug="dashboard", title=TITLE, app=app, icon="dashboard.svg")
