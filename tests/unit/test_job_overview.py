"""The Streaming jobs read model against the real PostgreSQL server, in a fresh migrated database."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from psycopg import sql

import tributary.job_overview as read_model
from tributary.catalog import APP_LOGS, PIPELINES, PLATFORM, USER_EVENTS, WEATHER
from tributary.clients import pg_connect
from tributary.job_overview import JobAction, job_overview
from tributary.migrations import apply_migrations

pytestmark = pytest.mark.integration  # needs PostgreSQL

NOW = datetime(2026, 5, 4, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def db(pg_url: str) -> str:
    apply_migrations(pg_url)
    return pg_url


def insert(pg_url: str, table: str, **values: Any) -> None:
    columns = ", ".join(values)
    placeholders = ", ".join(f"%({name})s" for name in values)
    with pg_connect(pg_url) as conn:
        conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({placeholders})", values)


def heartbeat(
    pg_url: str, job: str, query: str, batch: int, age_s: float, rate_in: float | None, rate_out: float | None
) -> None:
    insert(
        pg_url,
        PLATFORM.heartbeats_table,
        job_name=job,
        query_name=query,
        batch_id=batch,
        recorded_at=NOW - timedelta(seconds=age_s),
        input_rows=100,
        input_rows_per_s=rate_in,
        processed_rows_per_s=rate_out,
    )


def test_every_catalog_pipeline_has_a_row_even_without_registry_entries(db: str) -> None:
    overview = job_overview(db, now=NOW)
    assert [job.job for job in overview] == [p.job_name for p in PIPELINES.values()]
    for job, pipeline in zip(overview, PIPELINES.values(), strict=True):
        assert job.description == pipeline.description
        assert (job.state, job.desired_state) == ("stopped", "stopped")
        assert job.started_at is None and job.pid is None and job.app_id is None
        assert job.last_batch_at is None and job.last_batch_age_s is None
        assert job.input_rows_per_s is None and job.processed_rows_per_s is None and job.lag is None
        assert (job.restarts, job.consecutive_failures) == (0, 0)
        assert job.recent_actions == ()


def test_running_job_sums_the_newest_heartbeat_of_each_query(db: str) -> None:
    started = NOW - timedelta(minutes=10)
    insert(
        db,
        PLATFORM.jobs_table,
        job_name=USER_EVENTS.job_name,
        desired_state="running",
        actual_state="running",
        deploy_mode="local",
        pid=4242,
        app_id="local-1714824000000",
        started_at=started,
        restarts=2,
        consecutive_failures=0,
        last_lag=1500,
    )
    # Two queries; older batches of each must not count, nor another job's heartbeats.
    heartbeat(db, USER_EVENTS.job_name, "raw", 1, age_s=60, rate_in=1.0, rate_out=1.0)
    heartbeat(db, USER_EVENTS.job_name, "raw", 2, age_s=8, rate_in=100.0, rate_out=120.0)
    heartbeat(db, USER_EVENTS.job_name, "summary", 7, age_s=30, rate_in=5.0, rate_out=None)
    heartbeat(db, USER_EVENTS.job_name, "summary", 8, age_s=3.5, rate_in=50.0, rate_out=40.0)
    heartbeat(db, WEATHER.job_name, "raw", 1, age_s=1, rate_in=999.0, rate_out=999.0)

    job = job_overview(db, [USER_EVENTS], now=NOW)[0]
    assert job.job == USER_EVENTS.job_name
    assert (job.state, job.desired_state, job.deploy_mode) == ("running", "running", "local")
    assert (job.pid, job.app_id, job.started_at) == (4242, "local-1714824000000", started)
    assert job.last_batch_at == NOW - timedelta(seconds=3.5)
    assert job.last_batch_age_s == 3.5
    assert job.input_rows_per_s == pytest.approx(150.0)
    assert job.processed_rows_per_s == pytest.approx(160.0)
    assert (job.lag, job.restarts, job.consecutive_failures) == (1500, 2, 0)


def test_failed_job_shows_its_error_backoff_and_last_five_actions_newest_first(db: str) -> None:
    insert(
        db,
        PLATFORM.jobs_table,
        job_name=APP_LOGS.job_name,
        desired_state="running",
        actual_state="failed",
        restarts=3,
        consecutive_failures=3,
        last_error="Py4JJavaError: sink table app_log_events does not exist",
        next_restart_at=NOW + timedelta(seconds=120),
    )
    for minute in range(7):
        insert(
            db,
            PLATFORM.job_actions_table,
            job_name=APP_LOGS.job_name,
            at=NOW - timedelta(minutes=10 - minute),
            action="restart" if minute % 2 else "backoff",
            reason=f"attempt {minute}",
        )
    insert(db, PLATFORM.job_actions_table, job_name=WEATHER.job_name, at=NOW, action="start", reason="asked")

    overview = {job.job: job for job in job_overview(db, now=NOW)}
    failed = overview[APP_LOGS.job_name]
    assert (failed.state, failed.consecutive_failures, failed.restarts) == ("failed", 3, 3)
    assert failed.last_error == "Py4JJavaError: sink table app_log_events does not exist"
    assert failed.next_restart_at == NOW + timedelta(seconds=120)
    assert [a.reason for a in failed.recent_actions] == [f"attempt {m}" for m in (6, 5, 4, 3, 2)]
    assert failed.recent_actions[0] == JobAction(at=NOW - timedelta(minutes=4), action="backoff", reason="attempt 6")
    assert [a.action for a in overview[WEATHER.job_name].recent_actions] == ["start"]
    assert overview[USER_EVENTS.job_name].recent_actions == ()


def test_to_json_round_trips_through_json(db: str) -> None:
    insert(db, PLATFORM.jobs_table, job_name=USER_EVENTS.job_name, actual_state="starting", started_at=NOW)
    insert(db, PLATFORM.job_actions_table, job_name=USER_EVENTS.job_name, at=NOW, action="start", reason="desired")
    heartbeat(db, USER_EVENTS.job_name, "raw", 0, age_s=2, rate_in=10.0, rate_out=20.0)

    payload = json.loads(json.dumps([job.to_json() for job in job_overview(db, now=NOW)]))
    first = payload[0]
    assert first["job"] == USER_EVENTS.job_name and first["state"] == "starting"
    assert datetime.fromisoformat(first["started_at"]) == NOW
    assert datetime.fromisoformat(first["last_batch_at"]) == NOW - timedelta(seconds=2)
    assert first["last_batch_age_s"] == 2.0
    assert first["recent_actions"] == [{"at": NOW.isoformat(), "action": "start", "reason": "desired"}]
    assert set(first) == {
        "job",
        "description",
        "desired_state",
        "state",
        "deploy_mode",
        "pid",
        "app_id",
        "started_at",
        "last_batch_at",
        "last_batch_age_s",
        "input_rows_per_s",
        "processed_rows_per_s",
        "lag",
        "restarts",
        "consecutive_failures",
        "last_error",
        "next_restart_at",
        "recent_actions",
    }


def test_lookups_use_the_heartbeat_indexes(db: str) -> None:
    """The page polls every 5 s: the heartbeat lookups must not scan a job's whole history."""
    with pg_connect(db) as conn:
        conn.execute(
            f"""INSERT INTO {PLATFORM.heartbeats_table}
                    (job_name, query_name, batch_id, recorded_at, input_rows, input_rows_per_s)
                SELECT %s, 'q' || (b %% 3), b, %s::timestamptz - b * interval '1 second', 10, 1.0
                FROM generate_series(1, 30000) AS b""",
            (USER_EVENTS.job_name, NOW),
        )
        conn.execute(f"ANALYZE {PLATFORM.heartbeats_table}")
    job = job_overview(db, [USER_EVENTS], now=NOW)[0]
    assert job.input_rows_per_s == pytest.approx(3.0)
    assert job.last_batch_age_s == 1.0

    query = sql.SQL(read_model._JOBS_QUERY).format(
        jobs=sql.Identifier(PLATFORM.jobs_table), heartbeats=sql.Identifier(PLATFORM.heartbeats_table)
    )
    with pg_connect(db) as conn:
        row = conn.execute(
            sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) ") + query, {"jobs": [USER_EVENTS.job_name]}
        ).fetchone()
    assert row is not None
    heartbeat_nodes = [
        node for node in plan_nodes(row[0][0]["Plan"]) if node.get("Relation Name") == PLATFORM.heartbeats_table
    ]
    assert heartbeat_nodes
    for node in heartbeat_nodes:
        assert node["Node Type"] in {"Index Scan", "Index Only Scan"}, node
        touched = node["Actual Rows"] * node["Actual Loops"] + node.get("Rows Removed by Filter", 0)
        assert touched < 100, node


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)
