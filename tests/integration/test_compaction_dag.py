"""`airflow dags test` of the compaction DAG against the real Postgres, ES-API server and Spark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_compaction import OLD_A, RECENT, partition_exists, partition_rows, seed_day
from tributary.airflow_env import airflow_environment
from tributary.clients import pg_connect
from tributary.compaction_report import list_reports, load_report
from tributary.migrations import apply_migrations
from tributary.settings import Settings
from tributary.stack.postgres import ensure_database

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AIRFLOW = str(Path(sys.executable).parent / "airflow")


def _airflow(args: list[str], env: dict[str, str], timeout: int, *, expect_ok: bool = True) -> str:
    result = subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)
    output = result.stdout + result.stderr
    if expect_ok:
        assert result.returncode == 0, f"airflow {' '.join(args)} failed ({result.returncode}):\n{output[-6000:]}"
    return output


@pytest.mark.timeout(900)
def test_compaction_dag_dry_run_then_archives_and_reports(settings: Settings) -> None:
    apply_migrations(settings.pg_url)
    seed_day(settings.pg_url, OLD_A, 120)
    seed_day(settings.pg_url, RECENT, 7, first_offset=1_000)
    ensure_database(settings.airflow_db_url)
    env = airflow_environment(settings)
    _airflow(["db", "migrate"], env, timeout=240)

    dry = _airflow(["dags", "test", "tributary_compaction", "--conf", json.dumps({"dry_run": True})], env, 480)
    assert "compaction (dry run) succeeded: would archive 1 partition(s) (120 rows" in dry, dry[-4000:]
    assert partition_rows(settings.pg_url, OLD_A) == 120

    real = _airflow(["dags", "test", "tributary_compaction"], env, 480)
    assert "compaction succeeded: archived 1 partition(s) (120 rows" in real, real[-4000:]
    assert f"{settings.airflow_url}/tributary/reports/" in real  # the report task's link
    assert not partition_exists(settings.pg_url, OLD_A)
    assert partition_rows(settings.pg_url, RECENT) == 7
    parquet = list((Path(settings.lake_uri) / "user_events" / f"day={OLD_A.isoformat()}").glob("batch=*/*.parquet"))
    assert parquet

    with pg_connect(settings.pg_url) as conn:
        reports = list_reports(conn)
        assert [(r.state, r.dry_run) for r in reports] == [("succeeded", False), ("succeeded", True)]
        stored = load_report(conn, reports[0].id)
    assert stored is not None and [p.action for p in stored.partitions] == ["archived"]
    assert stored.partitions[0].lake_rows == 120 and stored.run_id != reports[1].run_id
