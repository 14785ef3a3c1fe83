"""The Streaming jobs page: its app in-process, then for real inside Airflow, in headless Chromium.

The in-process tests mount the page app the way the api-server does and stand in for Airflow's
`get_user` where a signed-in user is needed. The slow test runs `tributary up --stack-only` (Airflow on free
ports, the session's Kafka and ES-API server), checks that nothing is served without a token,
signs in through the simple auth manager's real login form and reads the page directly and
through its nav entry, as a user would; `tributary down` stops everything afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from airflow.api_fastapi.app import RESERVED_URL_PREFIXES
from airflow.api_fastapi.core_api.datamodels.plugins import ExternalViewResponse
from fastapi.testclient import TestClient
from tributary_plugin import TributaryPlugin

from tests.browser import PNG_SIGNATURE, Chromium, chromium_executable
from tests.integration.page_clients import mounted, signed_in_as_viewer
from tributary.airflow_env import admin_password
from tributary.catalog import PIPELINES, PLATFORM, USER_EVENTS
from tributary.clients import pg_connect
from tributary.migrations import apply_migrations
from tributary.settings import REPO_ROOT, Settings
from tributary_airflow.ui.jobs_page import PAGE, app

pytestmark = pytest.mark.integration

PREFIX = PAGE.url_prefix  # /tributary/jobs
GUARDED_PATHS = ("/", "/api/jobs", "/static/jobs.js", "/static/tributary.css")

# JavaScript expressions the browser test evaluates in the page.
USER_EVENTS_STATE = f"[data-job={USER_EVENTS.job_name}] [data-state]"
STATE_OF_USER_EVENTS = f"document.querySelector({USER_EVENTS_STATE!r})?.dataset.state"
USER_EVENTS_CELLS = (
    f"[...document.querySelectorAll('tr[data-job={USER_EVENTS.job_name}] > td')].map(cell => cell.textContent)"
)
ROW_STATES = (
    "Object.fromEntries([...document.querySelectorAll('tr[data-job]')]"
    ".map(row => [row.dataset.job, row.querySelector('[data-state]').textContent]))"
)
IFRAME_DOCUMENT = "document.querySelector('iframe')?.contentDocument"


def seed_running_user_events(pg_url: str) -> None:
    """The registry row of a running `user_events` job and a fresh heartbeat of one of its queries."""
    now = datetime.now(UTC)
    with pg_connect(pg_url) as conn:
        conn.execute(
            f"""INSERT INTO {PLATFORM.jobs_table}
                    (job_name, desired_state, actual_state, deploy_mode, pid, started_at, restarts, last_lag)
                VALUES (%s, 'running', 'running', 'local', 4242, %s, 1, 1200)""",
            (USER_EVENTS.job_name, now - timedelta(minutes=5)),
        )
        conn.execute(
            f"""INSERT INTO {PLATFORM.heartbeats_table}
                    (job_name, query_name, batch_id, recorded_at, input_rows, input_rows_per_s, processed_rows_per_s)
                VALUES (%s, 'raw_events', 41, %s, 500, 250.0, 312.5)""",
            (USER_EVENTS.job_name, now - timedelta(seconds=2)),
        )
        conn.execute(
            f"INSERT INTO {PLATFORM.job_actions_table} (job_name, action, reason) VALUES (%s, 'start', %s)",
            (USER_EVENTS.job_name, "desired state is running"),
        )


# ---------------------------------------------------------------------------------- in-process


@pytest.fixture
def client() -> Iterator[TestClient]:
    """The page app mounted under its prefix, as the api-server mounts it."""
    with mounted(app, PREFIX) as test_client:
        yield test_client


@pytest.fixture
def signed_in(client: TestClient) -> TestClient:
    """`client` with Airflow's `get_user` answering for a viewer (the real check runs in the slow test)."""
    return signed_in_as_viewer(app, client)


@pytest.mark.parametrize("path", GUARDED_PATHS)
def test_every_route_answers_401_without_a_token(client: TestClient, path: str) -> None:
    response = client.get(PREFIX + path)
    assert response.status_code == 401, response.text
    assert response.json() == {"detail": "Not authenticated"}


def test_no_unguarded_openapi_or_docs_routes(client: TestClient) -> None:
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert client.get(PREFIX + path).status_code == 404


def test_api_lists_every_catalog_job_for_a_signed_in_user(
    signed_in: TestClient, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply_migrations(pg_url)
    seed_running_user_events(pg_url)
    monkeypatch.setenv("TRIBUTARY_PG_URL", pg_url)

    response = signed_in.get(f"{PREFIX}/api/jobs")
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    jobs = {job["job"]: job for job in response.json()}
    assert list(jobs) == [p.job_name for p in PIPELINES.values()]
    running = jobs[USER_EVENTS.job_name]
    assert (running["state"], running["pid"], running["lag"], running["restarts"]) == ("running", 4242, 1200, 1)
    assert (running["input_rows_per_s"], running["processed_rows_per_s"]) == (250.0, 312.5)
    assert 0 <= running["last_batch_age_s"] < 60
    assert [a["action"] for a in running["recent_actions"]] == ["start"]
    assert all(job["state"] == "stopped" for name, job in jobs.items() if name != USER_EVENTS.job_name)


def test_api_says_to_migrate_when_the_registry_tables_are_missing(
    signed_in: TestClient, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIBUTARY_PG_URL", pg_url)  # a fresh database, no migrations applied
    response = signed_in.get(f"{PREFIX}/api/jobs")
    assert response.status_code == 503
    assert "run `tributary migrate`" in response.json()["detail"]


def test_page_and_assets_for_a_signed_in_user(signed_in: TestClient) -> None:
    page = signed_in.get(f"{PREFIX}/")
    assert page.status_code == 200
    assert f'<base href="{PREFIX}/">' in page.text
    assert "frame-ancestors 'self'" in page.headers["content-security-policy"]
    script = signed_in.get(f"{PREFIX}/static/jobs.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert 'fetch("api/jobs"' in script.text  # relative: works under the mount prefix
    assert signed_in.get(f"{PREFIX}/static/missing.js").status_code == 404
    assert signed_in.get(f"{PREFIX}/static/..%2F__init__.py").status_code == 404


def test_plugin_mounts_the_page_and_adds_a_nav_entry() -> None:
    assert TributaryPlugin.name == "tributary"
    assert {"app": app, "url_prefix": PREFIX, "name": "Tributary streaming jobs"} in TributaryPlugin.fastapi_apps
    assert not PREFIX.startswith(tuple(RESERVED_URL_PREFIXES))
    [view] = [v for v in TributaryPlugin.external_views if v["url_route"] == "tributary-jobs"]
    parsed = ExternalViewResponse.model_validate(view)  # the shape Airflow's plugin API serves
    assert (parsed.name, parsed.href, parsed.destination, parsed.url_route) == (
        "Streaming jobs",
        "tributary/jobs/",
        "nav",
        "tributary-jobs",
    )


# ---------------------------------------------------------------------------------- real Airflow


@dataclass(frozen=True)
class RunningAirflow:
    url: str
    user: str
    password: str


def tributary_cli(env: dict[str, str], *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tributary.cli", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def airflow(settings: Settings, settings_env: dict[str, str]) -> Iterator[RunningAirflow]:
    """`tributary up --stack-only` on the test's database; `tributary down` afterwards, whatever happened.

    Stack only: no bootstrap run, no streaming jobs (the supervisor DAG stays paused), so the
    registry holds exactly the rows the test writes.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")} | settings_env
    try:
        up = tributary_cli(env, "up", "--stack-only", timeout=240)
        assert up.returncode == 0, up.stdout + up.stderr
        password = admin_password(settings)
        assert password, up.stdout
        yield RunningAirflow(settings.airflow_url, settings.airflow_user, password)
    finally:
        down = tributary_cli(env, "down", timeout=90)
        assert down.returncode == 0, down.stdout + down.stderr


@pytest.mark.slow
@pytest.mark.timeout(480)
@pytest.mark.skipif(chromium_executable() is None, reason="needs Debian's chromium (scripts/system_deps.sh)")
def test_page_inside_airflow_needs_a_login_and_shows_the_running_job(
    settings: Settings, airflow: RunningAirflow, tmp_path: Path
) -> None:
    apply_migrations(settings.pg_url)
    seed_running_user_events(settings.pg_url)

    with httpx.Client(base_url=airflow.url, trust_env=False, timeout=30) as http:
        check_rest_access(http, airflow)

    with Chromium(tmp_path / "chromium") as browser:
        page = browser.new_page()

        page.navigate(f"{airflow.url}{PREFIX}/")
        assert "Not authenticated" in page.evaluate("document.body.innerText")

        # The simple auth manager's own login form; it stores the JWT in the `_token` cookie.
        page.navigate(f"{airflow.url}/auth/login")
        page.wait_for("document.querySelector('input[name=username]') !== null")
        page.insert_text("input[name=username]", airflow.user)
        page.insert_text("input[name=password]", airflow.password)
        page.click("button[type=submit]")
        page.wait_for("!location.pathname.startsWith('/auth/')", timeout=30)
        assert "_token" in page.cookies()

        page.navigate(f"{airflow.url}{PREFIX}/")
        page.wait_for(f"{STATE_OF_USER_EVENTS} === 'RUNNING'")
        assert page.evaluate(ROW_STATES) == {
            p.job_name: ("RUNNING" if p is USER_EVENTS else "STOPPED") for p in PIPELINES.values()
        }
        cells = page.evaluate(USER_EVENTS_CELLS)
        assert cells[3:7] == ["250", "312.5", "1,200", "1"], cells  # input, processed rows/s, lag, restarts
        direct = page.screenshot(tmp_path / "streaming-jobs.png")

        # The page refreshes itself: a new lag sample shows up without a reload.
        with pg_connect(settings.pg_url) as conn:
            conn.execute(
                f"UPDATE {PLATFORM.jobs_table} SET last_lag = 3400 WHERE job_name = %s", (USER_EVENTS.job_name,)
            )
        page.wait_for(f"({USER_EVENTS_CELLS})[5] === '3,400'", timeout=15)

        # As a user gets there: the top-level nav entry opens the page in the UI's iframe.
        page.navigate(f"{airflow.url}/")
        nav_link = "a[href$='plugin/tributary-jobs']"
        page.wait_for(f"document.querySelector({nav_link!r}) !== null", timeout=30)
        page.click(nav_link)
        page.wait_for("location.pathname.endsWith('/plugin/tributary-jobs')")
        page.wait_for(f"{IFRAME_DOCUMENT}?.querySelector({USER_EVENTS_STATE!r})?.dataset.state === 'RUNNING'")
        in_ui = page.screenshot(tmp_path / "airflow-streaming-jobs.png")
        assert page.exceptions == [], page.exceptions

    for shot in (direct, in_ui):
        assert shot.is_file() and shot.stat().st_size > 1000
        assert shot.read_bytes().startswith(PNG_SIGNATURE)


def check_rest_access(http: httpx.Client, airflow: RunningAirflow) -> None:
    """Nothing without a token, nothing with a forged one; the JSON list with the admin's JWT."""
    for path in GUARDED_PATHS:
        response = http.get(PREFIX + path)
        assert response.status_code == 401, (path, response.status_code, response.text)
    forged = http.get(f"{PREFIX}/api/jobs", headers={"Authorization": "Bearer not-a-jwt"})
    assert forged.status_code == 403, forged.text  # Airflow's answer to an invalid JWT

    login = http.post("/auth/token", json={"username": airflow.user, "password": airflow.password})
    assert login.status_code == 201, login.text
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}

    response = http.get(f"{PREFIX}/api/jobs", headers=headers)
    assert response.status_code == 200, response.text
    jobs: dict[str, dict[str, Any]] = {job["job"]: job for job in response.json()}
    assert list(jobs) == [p.job_name for p in PIPELINES.values()]
    running = jobs[USER_EVENTS.job_name]
    assert (running["state"], running["desired_state"], running["input_rows_per_s"]) == ("running", "running", 250.0)
    assert 0 <= running["last_batch_age_s"] < 120

    plugins = http.get("/api/v2/plugins", headers=headers)
    assert plugins.status_code == 200, plugins.text
    [ours] = [p for p in plugins.json()["plugins"] if p["name"] == "tributary"]
    assert PREFIX in [a["url_prefix"] for a in ours["fastapi_apps"]]
    assert "tributary-jobs" in [v["url_route"] for v in ours["external_views"]]
    errors = http.get("/api/v2/plugins/importErrors", headers=headers)
    assert errors.status_code == 200, errors.text
    ours_failing = [
        e for e in errors.json()["import_errors"] if "tributary_plugin" in e["source"] or "/ui/" in e["source"]
    ]
    assert ours_failing == []
