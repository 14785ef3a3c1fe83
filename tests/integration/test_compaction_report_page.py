"""The Compaction reports page and a generated report in headless Chromium.

The in-process tests mount the page app as the api-server does and stand in for Airflow's
`get_user` where a signed-in user is needed (the real check is the same `page_app` dependency the
Streaming jobs page's slow test exercises inside Airflow). The browser test runs a real
compaction, opens its standalone report from disk and the same report served by the page app
(with its real Content-Security-Policy) and waits until both ECharts charts hold data;
screenshots land in the test's tmp dir.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
from airflow.api_fastapi.core_api.security import get_user
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pyspark.sql import SparkSession
from tributary_plugin import TributaryPlugin

from spark_jobs.batch.compact import CompactionOptions, run_compaction
from tests.browser import PNG_SIGNATURE, Chromium, chromium_executable
from tests.integration.page_clients import mounted, signed_in_as_viewer
from tests.integration.test_compaction import OLD_A, OLD_B, TODAY, seed_day
from tributary.clients import pg_connect
from tributary.compaction_report import (
    ECHARTS_FILE,
    REPORTS_URL_PATH,
    CompactionReport,
    PartitionResult,
    insert_report,
    store_report,
)
from tributary.migrations import apply_migrations
from tributary.settings import Settings
from tributary.stack.ports import free_port
from tributary_airflow.ui.reports_page import PAGE, app

pytestmark = pytest.mark.integration

PREFIX = PAGE.url_prefix  # /tributary/reports
GUARDED_PATHS = ("/", "/1", "/1/json", "/static/compaction-report.js", "/static/vendor/echarts.min.js")

# True once every chart of the page is an ECharts instance whose first series has data.
CHARTS_HAVE_DATA = """(() => {
  const charts = [...document.querySelectorAll('[data-chart]')];
  if (charts.length !== 2 || typeof echarts === 'undefined') return false;
  return charts.every(el => {
    const chart = echarts.getInstanceByDom(el);
    return !!chart && chart.getOption().series[0].data.length > 0;
  });
})()"""
SERIES_LENGTHS = (
    "[...document.querySelectorAll('[data-chart]')]"
    ".map(el => echarts.getInstanceByDom(el).getOption().series.map(s => s.data.length))"
)


def sample_report() -> CompactionReport:
    report = CompactionReport.start(run_id="scheduled__<b>x</b>", dry_run=False, today=TODAY, lake_uri="/lake")
    report.partitions.append(
        PartitionResult(
            pipeline="user_events",
            table="user_events",
            partition="user_events_20200101",
            day="2020-01-01",
            action="archived",
            verification="passed",
            rows_before=120,
            rows_after=0,
            lake_rows=120,
            rows_exported=120,
            bytes_reclaimed=81920,
            files_written=1,
            bytes_written=9000,
        )
    )
    report.finish()
    return report


def stored_sample(pg_url: str) -> CompactionReport:
    report = sample_report()
    with pg_connect(pg_url, autocommit=True) as conn:
        insert_report(conn, report)
        store_report(conn, report, None, None)
    return report


@pytest.fixture
def client() -> Iterator[TestClient]:
    """The page app mounted under its prefix, as the api-server mounts it."""
    with mounted(app, PREFIX) as test_client:
        yield test_client


@pytest.fixture
def signed_in(client: TestClient) -> TestClient:
    return signed_in_as_viewer(app, client)


@pytest.mark.parametrize("path", GUARDED_PATHS)
def test_every_route_answers_401_without_a_token(client: TestClient, path: str) -> None:
    response = client.get(PREFIX + path)
    assert response.status_code == 401, response.text


def test_list_links_each_report_and_serves_it_with_its_scripts(
    signed_in: TestClient, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply_migrations(pg_url)
    monkeypatch.setenv("TRIBUTARY_PG_URL", pg_url)
    report = stored_sample(pg_url)

    listing = signed_in.get(f"{PREFIX}/")
    assert listing.status_code == 200, listing.text
    assert f'<base href="{PREFIX}/">' in listing.text
    assert f'<a href="{report.id}">#{report.id}</a>' in listing.text
    assert "&lt;b&gt;x&lt;/b&gt;" in listing.text and "<b>x</b>" not in listing.text  # escaped
    assert "archived 1 partition(s) (120 rows" in listing.text

    page = signed_in.get(f"{PREFIX}/{report.id}")
    assert page.status_code == 200, page.text
    assert '<script src="static/vendor/echarts.min.js" defer></script>' in page.text
    assert '<script src="static/compaction-report.js" defer></script>' in page.text
    assert 'id="chart-rows"' in page.text and 'id="chart-bytes"' in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src" not in csp  # scripts: same origin only
    assert "<script>" not in page.text  # nothing inline: the data block is JSON, not a script

    data = signed_in.get(f"{PREFIX}/{report.id}/json").json()
    assert data["partitions"][0]["rows_before"] == 120 and data["state"] == "succeeded"
    assert signed_in.get(f"{PREFIX}/{(report.id or 0) + 1}").status_code == 404
    script = signed_in.get(f"{PREFIX}/static/compaction-report.js")
    assert script.status_code == 200 and "echarts.init" in script.text
    if ECHARTS_FILE.is_file():
        vendor = signed_in.get(f"{PREFIX}/static/vendor/echarts.min.js")
        assert vendor.status_code == 200 and len(vendor.content) > 100_000
    assert signed_in.get(f"{PREFIX}/static/vendor/..%2F..%2Fjobs.js").status_code == 404


def test_list_says_to_migrate_when_the_table_is_missing(
    signed_in: TestClient, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIBUTARY_PG_URL", pg_url)  # a fresh database, no migrations applied
    response = signed_in.get(f"{PREFIX}/")
    assert response.status_code == 503
    assert "run `tributary migrate`" in response.json()["detail"]


def test_plugin_lists_the_reports_page_in_the_nav() -> None:
    assert PREFIX == REPORTS_URL_PATH  # where the DAG's report task links to
    assert {"app": app, "url_prefix": PREFIX, "name": "Tributary compaction reports"} in TributaryPlugin.fastapi_apps
    views = {v["url_route"]: v for v in TributaryPlugin.external_views}
    assert views["tributary-reports"]["href"] == "tributary/reports/"
    assert views["tributary-reports"]["name"] == "Compaction reports"


# ---------------------------------------------------------------------------------- browser


class PageServer:
    """The page app (auth stubbed) on a free loopback port, served by uvicorn in a thread."""

    def __init__(self) -> None:
        root = FastAPI()
        root.mount(PREFIX, app)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(root, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> PageServer:
        app.dependency_overrides[get_user] = lambda: SimpleAuthManagerUser(username="viewer", role="viewer")
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start within 20 s"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        app.dependency_overrides.clear()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PREFIX}"


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(chromium_executable() is None, reason="needs Debian's chromium (scripts/system_deps.sh)")
@pytest.mark.skipif(not ECHARTS_FILE.is_file(), reason="ECharts is not installed: run scripts/install_js.sh")
def test_a_generated_report_renders_its_charts_in_chromium(
    spark: SparkSession, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply_migrations(settings.pg_url)
    seed_day(settings.pg_url, OLD_A, 150, duplicates=3)
    seed_day(settings.pg_url, OLD_B, 60, first_offset=10_000)
    report = run_compaction(spark, settings, CompactionOptions(today=TODAY, run_id="render-test", rows_per_file=50))
    assert report.state == "succeeded", report.errors
    html_path = settings.state_dir / "reports" / "compaction" / f"{report.id:06d}" / "report.html"
    assert html_path.is_file() and (html_path.parent / "echarts.min.js").is_file()

    with Chromium(tmp_path / "chromium") as browser, PageServer() as server:
        page = browser.new_page()

        # The standalone copy, opened from disk.
        page.navigate(html_path.as_uri())
        page.wait_for(CHARTS_HAVE_DATA, timeout=30)
        assert page.evaluate(SERIES_LENGTHS) == [[2, 2, 2], [2, 2]]
        assert page.evaluate("document.querySelector('[data-state]').dataset.state") == "succeeded"
        from_disk = page.screenshot(tmp_path / "compaction-report-file.png")

        # The same report served by the page app, under its Content-Security-Policy.
        page.navigate(f"{server.url}/")
        page.wait_for(f"document.querySelector('tr[data-report=\"{report.id}\"] a') !== null")
        page.click(f'tr[data-report="{report.id}"] a')
        page.wait_for(f"location.pathname === '{PREFIX}/{report.id}'")
        page.wait_for(CHARTS_HAVE_DATA, timeout=30)
        rows_chart = page.evaluate(
            "echarts.getInstanceByDom(document.getElementById('chart-rows')).getOption().series[0].data"
        )
        assert sorted(rows_chart) == [60, 153]  # rows before, per day
        served = page.screenshot(tmp_path / "compaction-report-served.png")
        assert page.exceptions == [], page.exceptions

    for shot in (from_disk, served):
        assert shot.is_file() and shot.stat().st_size > 5000
        assert shot.read_bytes().startswith(PNG_SIGNATURE)
