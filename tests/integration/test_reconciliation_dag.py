"""`airflow dags test` of the reconciliation DAG against the real Postgres, broker, ES-API server
and Spark (spark-submit): a clean hour passes; a wrong summary row fails the run and triggers the
backfill DAG for exactly that window.

The checks themselves are tested on real data in test_reconciliation.py; here the hours hold
nothing but what the test puts there, in the test's own database.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tributary.airflow_env import DAGS_FOLDER, airflow_environment
from tributary.catalog import USER_EVENTS
from tributary.clients import kafka_admin, pg_connect
from tributary.migrations import apply_migrations
from tributary.provisioning import ensure_topics
from tributary.reconciliation import floor_hour
from tributary.settings import Settings
from tributary.stack.postgres import ensure_database

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AIRFLOW = str(Path(sys.executable).parent / "airflow")
DAG_ID = "tributary_reconciliation"

# Stands in for tributary_backfill where that DAG is not in the checkout: same id and params,
# one task. Triggered runs are only queued (`dags test` runs no scheduler), never executed.
BACKFILL_STUB = '''
"""Stand-in for tributary_backfill in the reconciliation DAG test: same id and params."""
from datetime import datetime

from airflow.sdk import Param, dag, task


@dag(
    dag_id="tributary_backfill",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    params={
        "pipeline": Param("user_events", type="string"),
        "start": Param(None, type=["null", "string"]),
        "end": Param(None, type=["null", "string"]),
        "targets": Param(["summaries"], type="array"),
        "dry_run": Param(False, type="boolean"),
    },
)
def tributary_backfill():
    @task
    def backfill():
        return None

    backfill()


tributary_backfill()
'''


def _airflow(args: list[str], env: dict[str, str], timeout: int, *, expect_ok: bool = True) -> str:
    result = subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)
    output = result.stdout + result.stderr
    if expect_ok:
        assert result.returncode == 0, f"airflow {' '.join(args)} failed ({result.returncode}):\n{output[-6000:]}"
    else:
        assert result.returncode != 0, f"airflow {' '.join(args)} should have failed:\n{output[-6000:]}"
    return output


def _dags_folder(tmp_path: Path) -> Path:
    """The project's DAG files, plus the backfill stand-in if the checkout has no backfill DAG."""
    folder = tmp_path / "dags"
    folder.mkdir()
    for path in DAGS_FOLDER.glob("*.py"):
        (folder / path.name).symlink_to(path)
    if not (folder / "tributary_backfill.py").exists():
        (folder / "tributary_backfill.py").write_text(BACKFILL_STUB)
    return folder


def _runs(settings: Settings) -> list[tuple[Any, ...]]:
    with pg_connect(settings.pg_url, autocommit=True) as conn:
        return conn.execute(
            """SELECT r.id, r.pipeline, r.hour_start, r.state, r.requested_by, r.backfill_triggered,
                      r.backfill_run_ids, count(x.*), count(x.*) FILTER (WHERE x.outcome = 'mismatch')
               FROM reconciliation_runs r LEFT JOIN reconciliation_results x ON x.run_id = r.id
               GROUP BY r.id ORDER BY r.id"""
        ).fetchall()


def _backfill_conf(settings: Settings, run_id: str) -> Any:
    """The conf of a tributary_backfill run, from the Airflow metadata database."""
    with pg_connect(settings.airflow_db_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT conf FROM dag_run WHERE dag_id = 'tributary_backfill' AND run_id = %s", (run_id,)
        ).fetchone()
    assert row is not None, f"no tributary_backfill run {run_id}"
    return json.loads(row[0]) if isinstance(row[0], str | bytes) else row[0]


@pytest.mark.timeout(900)
def test_reconciliation_dag_passes_a_clean_hour_and_backfills_a_wrong_summary(
    settings: Settings, tmp_path: Path
) -> None:
    apply_migrations(settings.pg_url)
    ensure_topics(kafka_admin(settings), [USER_EVENTS.topic])
    ensure_database(settings.airflow_db_url)
    env = {**airflow_environment(settings), "AIRFLOW__CORE__DAGS_FOLDER": str(_dags_folder(tmp_path))}
    _airflow(["db", "migrate"], env, timeout=240)
    # The backfill DAG must be known to the metadata database before anything can trigger it.
    _airflow(["dags", "reserialize"], env, timeout=240)

    clean_hour = floor_hour(datetime.now(UTC)) - timedelta(hours=4)
    conf = {
        "pipeline": "user_events",
        "start": clean_hour.isoformat(),
        "end": (clean_hour + timedelta(hours=1)).isoformat(),
    }
    output = _airflow(["dags", "test", DAG_ID, "--conf", json.dumps(conf)], env, timeout=600)
    assert "user_events " + f"{clean_hour:%Y-%m-%d %H:%M}" in output, output[-4000:]
    ((run_id, pipeline, hour_start, state, requested_by, triggered, _, results, mismatches),) = _runs(settings)
    assert (pipeline, hour_start, state, triggered) == ("user_events", clean_hour, "passed", False)
    assert requested_by.startswith(f"airflow:{DAG_ID}/")
    # One result per topic partition, one for Elasticsearch, one per window size; all agree.
    assert (results, mismatches) == (USER_EVENTS.topic.partitions + 1 + len(USER_EVENTS.windows), 0)

    # A summary row for a window no raw event supports: the hour fails, and the backfill of
    # exactly that window's range is triggered.
    bad_hour = clean_hour - timedelta(hours=1)
    window_start = bad_hour + timedelta(minutes=10)
    with pg_connect(settings.pg_url, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO user_activity_summary (user_id, window_start, window_seconds, event_count,
                   distinct_products, action_counts, first_event_ts, last_event_ts)
               VALUES (7, %s, 5, 3, 2, '{"view": 3}', %s, %s)""",
            (window_start, window_start, window_start + timedelta(seconds=4)),
        )
    conf = {
        "pipeline": "user_events",
        "start": bad_hour.isoformat(),
        "end": (bad_hour + timedelta(hours=1)).isoformat(),
    }
    output = _airflow(["dags", "test", DAG_ID, "--conf", json.dumps(conf)], env, timeout=600, expect_ok=False)
    assert "reconciliation found problems in 1 of 1 hours" in output, output[-6000:]
    assert "stored, but raw has no events for it" in output

    runs = _runs(settings)
    assert len(runs) == 2 and runs[0][0] == run_id
    _, pipeline, hour_start, state, _, triggered, backfill_run_ids, _, mismatches = runs[1]
    assert (pipeline, hour_start, state, mismatches) == ("user_events", bad_hour, "failed", 1)
    assert triggered and len(backfill_run_ids) == 1, output[-6000:]
    assert _backfill_conf(settings, backfill_run_ids[0]) == {
        "pipeline": "user_events",
        "start": window_start.isoformat(),
        "end": (window_start + timedelta(seconds=5)).isoformat(),
        "targets": ["summaries"],
        "dry_run": False,
    }
