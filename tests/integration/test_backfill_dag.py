"""The backfill DAG for real: `airflow dags test` with params, and a trigger through the REST API
of a running Airflow (valid params run the backfill, invalid ones are refused with 400).

Raw events are written straight into the raw table (as the streaming job would have), three hours
ago, with one user bursting so that anomalies and alerts come out too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from spark_jobs.user_events.parse import EVENT_COLUMNS
from tributary.airflow_api import AirflowApi, AirflowApiError
from tributary.airflow_env import admin_password, airflow_environment
from tributary.catalog import PLATFORM, USER_EVENTS
from tributary.clients import es_client, kafka_admin, pg_connect
from tributary.migrations import apply_migrations
from tributary.producers.user_events import EventMix, generate_events, user_rows
from tributary.provisioning import ensure_index_templates, ensure_topics
from tributary.settings import REPO_ROOT, Settings
from tributary.stack.postgres import ensure_database

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AIRFLOW = str(Path(sys.executable).parent / "airflow")
DAG_ID = "tributary_backfill"
# The raw table's columns, as the job writes them.
RAW_COLUMNS = EVENT_COLUMNS
DOC_FIELDS = RAW_COLUMNS[5:]


def seed(settings: Settings, events: int = 1_200) -> tuple[datetime, datetime]:
    """Schema, users, topics, templates, and `events` raw rows over ~2 minutes three hours ago."""
    apply_migrations(settings.pg_url)
    ensure_topics(kafka_admin(settings), [PLATFORM.alerts_topic])
    ensure_index_templates(es_client(settings), list(USER_EVENTS.indices.values()))
    start = (datetime.now(UTC) - timedelta(hours=3)).replace(second=0, microsecond=0)
    mix = EventMix(users=30, burst_users=(7,), burst_share=0.3)
    rows = []
    for offset, event in enumerate(generate_events(events, seed=5, start=start, events_per_s=10, mix=mix)):
        doc = json.loads(event.value)
        ts = datetime.fromisoformat(doc["timestamp"])
        rows.append((USER_EVENTS.topic.name, offset % 3, offset, ts, ts, *(doc[f] for f in DOC_FIELDS)))
    with pg_connect(settings.pg_url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO users (user_id, name, email, region, segment) VALUES (%s, %s, %s, %s, %s)", user_rows(30)
        )
        cur.execute("SELECT ensure_day_partition(%s, %s)", (USER_EVENTS.tables.raw, start.date()))
        cur.execute("SELECT ensure_day_partition(%s, %s)", (USER_EVENTS.tables.raw, rows[-1][4].date()))
        with cur.copy(f"COPY {USER_EVENTS.tables.raw} ({', '.join(RAW_COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    return start - timedelta(minutes=1), rows[-1][4] + timedelta(seconds=1)


def conf(start: datetime, end: datetime, **changes: Any) -> dict[str, Any]:
    return {
        "pipeline": "user_events",
        "start": start.isoformat().replace("+00:00", "Z"),
        "end": end.isoformat(),
        "targets": ["summaries", "anomalies", "alerts"],
        "dry_run": False,
        **changes,
    }


def query(settings: Settings, sql: str) -> list[tuple[Any, ...]]:
    with pg_connect(settings.pg_url) as conn:
        return conn.execute(sql).fetchall()


def airflow(args: list[str], env: dict[str, str], timeout: int = 300) -> str:
    result = subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"airflow {' '.join(args)} failed ({result.returncode}):\n{output[-6000:]}"
    return output


@pytest.mark.timeout(900)
def test_dags_test_runs_the_backfill_with_params_and_shows_its_progress(settings: Settings) -> None:
    start, end = seed(settings)
    ensure_database(settings.airflow_db_url)
    env = airflow_environment(settings)
    airflow(["db", "migrate"], env, timeout=240)

    out = airflow(["dags", "test", DAG_ID, "--conf", json.dumps(conf(start, end, dry_run=True))], env, timeout=400)
    assert "backfill user_events: read 1,200 rows (100% of 1,200); would write: summaries" in out, out[-6000:]
    assert query(settings, "SELECT count(*) FROM user_activity_summary") == [(0,)], "a dry run writes nothing"

    out = airflow(["dags", "test", DAG_ID, "--conf", json.dumps(conf(start, end))], env, timeout=400)
    assert "backfill user_events: 1,200 rows to read" in out, out[-6000:]
    assert "backfill user_events: read 1,200 rows (100% of 1,200); written: summaries" in out
    [(summaries,)] = query(settings, "SELECT count(*) FROM user_activity_summary")
    [(anomalies, users)] = query(settings, "SELECT count(*), array_agg(DISTINCT user_id) FROM anomalous_events")
    [(alerts, unpublished)] = query(
        settings,
        "SELECT count(*), count(*) FILTER (WHERE published_at IS NULL) FROM outbox WHERE topic = 'anomaly_alerts'",
    )
    assert summaries > 1_200 and anomalies > 0 and 7 in users
    assert alerts == anomalies and unpublished == 0, "alerts queued for every new anomaly, and published"
    runs = query(settings, "SELECT dry_run, state, rows_read, requested_by FROM backfill_runs ORDER BY id")
    assert [r[:3] for r in runs] == [(True, "succeeded", 1_200), (False, "succeeded", 1_200)]
    assert all(r[3].startswith(f"airflow:{DAG_ID}/") for r in runs)


# ---------------------------------------------------------------------------------- REST API


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
def running_airflow(settings: Settings, settings_env: dict[str, str]) -> Iterator[RunningAirflow]:
    """`tributary up --stack-only` on the test's database; `tributary down` afterwards, whatever happened."""
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


BAD_PARAMS = [
    {"pipeline": "app_logs"},  # in the catalog, but without a backfill
    {"targets": ["summaries", "raw"]},
    {"targets": []},
    {"start": "last tuesday"},
    {"end": "2026-11-23T10:00:00"},
    {"dry_run": "maybe"},
]


@pytest.mark.timeout(900)
def test_rest_trigger_runs_with_valid_params_and_refuses_invalid_ones(
    settings: Settings, running_airflow: RunningAirflow
) -> None:
    start, end = seed(settings)
    with AirflowApi(running_airflow.url, running_airflow.user, running_airflow.password) as api:
        api.wait_for_dag(DAG_ID)
        api.unpause(DAG_ID)
        for bad in BAD_PARAMS:
            with pytest.raises(AirflowApiError, match=f"/api/v2/dags/{DAG_ID}/dagRuns: 400 "):
                api.trigger(DAG_ID, {**conf(start, end), **bad})
        missing = conf(start, end)
        del missing["start"]
        with pytest.raises(AirflowApiError, match=r": 400 .*start"):
            api.trigger(DAG_ID, missing)
        assert query(settings, "SELECT count(*) FROM backfill_runs") == [(0,)], "nothing ran for a refused trigger"

        run_id = api.trigger(DAG_ID, conf(start, end, targets=["summaries"]))
        state = api.wait_for_run(DAG_ID, run_id, timeout_s=600)
        assert state == "success", api.failed_task_logs_hint(DAG_ID, run_id)
        tasks = api.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")["task_instances"]
        [backfill] = [t for t in tasks if t["task_id"] == "backfill"]
        log = api.request(
            "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/backfill/logs/{backfill['try_number']}"
        )
    text = json.dumps(log)
    assert "backfill user_events: read 1,200 rows (100% of 1,200); written: summaries" in text, text[-3000:]
    assert query(settings, "SELECT state, targets, requested_by FROM backfill_runs") == [
        ("succeeded", ["summaries"], f"airflow:{DAG_ID}/{run_id}")
    ]
    [(summaries,)] = query(settings, "SELECT count(*) FROM user_activity_summary")
    assert summaries > 1_200
