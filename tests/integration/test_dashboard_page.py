"""The Log dashboard for real: inside a running Airflow api-server, in headless Chromium.

`tributary up --stack-only` (the `airflow` fixture of the Streaming jobs page's test) runs Airflow
on free ports against the session's Kafka and ES-API server. Known app-log documents of the last
hour go into today's `tributary-app-logs-*` index; the test checks that nothing is served without
a token, signs in through the simple auth manager's login form, waits until every ECharts chart
of the page holds data, switches the time range, sees a new document arrive through the page's
auto-refresh, and opens the page through its nav entry. Screenshots land in the test's tmp dir.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.browser import PNG_SIGNATURE, Chromium, chromium_executable
from tests.integration.test_jobs_page import RunningAirflow, airflow  # noqa: F401  (fixture)
from tests.integration.test_log_dashboard import LogLine, es_settings, index_lines
from tributary.clients import es_client
from tributary.compaction_report import ECHARTS_FILE
from tributary.settings import Settings
from tributary_airflow.ui.dashboard_page import PAGE

pytestmark = pytest.mark.integration

PREFIX = PAGE.url_prefix  # /tributary/dashboard
CHART_NAMES = ["requests", "errors", "endpoints", "agents", "heatmap"]

# True once each of the five charts is an ECharts instance whose every series has points.
CHARTS_HAVE_DATA = """(() => {
  const charts = [...document.querySelectorAll('[data-chart]')];
  if (charts.length !== 5 || typeof echarts === 'undefined') return false;
  return charts.every(el => {
    const chart = echarts.getInstanceByDom(el);
    return !!chart && chart.getOption().series.length > 0
      && chart.getOption().series.every(s => s.data.length > 0);
  });
})()"""
SERIES_LENGTHS = (
    "Object.fromEntries([...document.querySelectorAll('[data-chart]')].map(el => "
    "[el.dataset.chart, echarts.getInstanceByDom(el).getOption().series.map(s => s.data.length)]))"
)
TOTAL = "document.body.dataset.total"
IFRAME_DOCUMENT = "document.querySelector('iframe')?.contentDocument"


def recent_lines(now: datetime) -> list[LogLine]:
    """8 requests in the last 10 minutes and 4 between 20 and 50 minutes ago (all in the last hour)."""
    agents = [("Chrome", "Linux", "desktop"), ("Firefox", "Windows", "desktop"), ("Safari", "iOS", "mobile")]
    statuses = [200, 200, 404, 200, 500, 301, 200, 503]
    lines = []
    for i, minutes_ago in enumerate([1, 2, 3, 4, 5, 6, 8, 10, 20, 30, 40, 50]):
        browser, os, device = agents[i % len(agents)]
        lines.append(
            LogLine(
                (now - timedelta(minutes=minutes_ago)).isoformat(),
                "GET" if i % 3 else "POST",
                ["/api/items/{id}", "/api/orders", "/health"][i % 3],
                statuses[i % len(statuses)],
                browser,
                os,
                device,
                float(10 * (i + 1)),
                f"10.0.1.{i % 4}",
            )
        )
    return lines


def check_rest_access(http: httpx.Client, running: RunningAirflow, expected_total: int) -> None:
    """Nothing without a token; the chart data with the admin's JWT."""
    for path in ("/", "/api/dashboard", "/static/dashboard.js", "/static/vendor/echarts.min.js"):
        response = http.get(PREFIX + path)
        assert response.status_code == 401, (path, response.status_code, response.text)
    login = http.post("/auth/token", json={"username": running.user, "password": running.password})
    assert login.status_code == 201, login.text
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    response = http.get(f"{PREFIX}/api/dashboard", params={"range": "1h"}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["total"] == expected_total


@pytest.mark.slow
@pytest.mark.timeout(480)
@pytest.mark.skipif(chromium_executable() is None, reason="needs Debian's chromium (scripts/system_deps.sh)")
@pytest.mark.skipif(not ECHARTS_FILE.is_file(), reason="ECharts is not installed: run scripts/install_js.sh")
def test_dashboard_inside_airflow_draws_every_chart_and_refreshes(
    settings: Settings,
    airflow: RunningAirflow,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
) -> None:
    es = es_client(es_settings(settings.es_url))
    now = datetime.now(UTC)
    lines = recent_lines(now)
    written = index_lines(es, lines)
    try:
        with httpx.Client(base_url=airflow.url, trust_env=False, timeout=30) as http:
            check_rest_access(http, airflow, expected_total=12)

        with Chromium(tmp_path / "chromium") as browser:
            page = browser.new_page()

            # The simple auth manager's own login form; it stores the JWT in the `_token` cookie.
            page.navigate(f"{airflow.url}/auth/login")
            page.wait_for("document.querySelector('input[name=username]') !== null")
            page.insert_text("input[name=username]", airflow.user)
            page.insert_text("input[name=password]", airflow.password)
            page.click("button[type=submit]")
            page.wait_for("!location.pathname.startsWith('/auth/')", timeout=30)

            page.navigate(f"{airflow.url}{PREFIX}/")
            page.wait_for(CHARTS_HAVE_DATA, timeout=30)
            assert page.evaluate(TOTAL) == "12"
            lengths = page.evaluate(SERIES_LENGTHS)
            assert list(lengths) == CHART_NAMES
            assert lengths["requests"] == [60] and lengths["errors"] == [60, 60]  # 1 h of 1 min buckets
            assert lengths["endpoints"] == [3, 3, 3]
            hours = {(line.timestamp.isoweekday(), line.timestamp.hour) for line in lines}
            assert lengths["heatmap"] == [len(hours)]  # one cell per (weekday, hour) with requests
            assert all(n > 0 for n in lengths["agents"]) and len(lengths["agents"]) == 3
            assert page.evaluate("document.getElementById('empty').hidden") is True
            shot_hour = page.screenshot(tmp_path / "log-dashboard-1h.png")

            # The range selector: the last 15 minutes hold the 8 recent requests.
            page.evaluate(
                "(() => { const s = document.getElementById('range'); s.value = '15m';"
                " s.dispatchEvent(new Event('change')); })()"
            )
            page.wait_for(f"{TOTAL} === '8'", timeout=20)
            page.wait_for(CHARTS_HAVE_DATA)
            assert page.evaluate(SERIES_LENGTHS)["requests"] == [30]  # 30 s buckets

            # Auto-refresh: a request indexed now shows up without a reload.
            arrived = LogLine(
                datetime.now(UTC).isoformat(), "GET", "/new", 201, "Chrome", "Linux", "desktop", 1.0, "10.0.1.9"
            )
            written += index_lines(es, [arrived], first_offset=len(lines))
            page.wait_for(f"{TOTAL} === '9'", timeout=40)
            shot_refreshed = page.screenshot(tmp_path / "log-dashboard-15m.png")

            # As a user gets there: the top-level nav entry opens the page in the UI's iframe.
            page.navigate(f"{airflow.url}/")
            nav_link = "a[href$='plugin/tributary-dashboard']"
            page.wait_for(f"document.querySelector({nav_link!r}) !== null", timeout=30)
            page.click(nav_link)
            page.wait_for("location.pathname.endsWith('/plugin/tributary-dashboard')")
            page.wait_for(f"{IFRAME_DOCUMENT}?.body?.dataset.total === '13'", timeout=30)
            page.wait_for(
                f"{IFRAME_DOCUMENT}.querySelectorAll('[data-chart][data-rendered=true]').length === 5", timeout=30
            )
            shot_in_ui = page.screenshot(tmp_path / "airflow-log-dashboard.png")
            assert page.exceptions == [], page.exceptions
    finally:
        for name in written:
            es.options(ignore_status=404).indices.delete(index=name)
        es.close()

    for shot in (shot_hour, shot_refreshed, shot_in_ui):
        assert shot.is_file() and shot.stat().st_size > 5000
        assert shot.read_bytes().startswith(PNG_SIGNATURE)
