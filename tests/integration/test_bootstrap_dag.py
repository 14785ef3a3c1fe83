"""`airflow dags test` of the bootstrap DAG against the real Postgres, broker and ES-API server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tributary.airflow_env import airflow_environment
from tributary.catalog import all_indices, all_topics
from tributary.clients import es_client, kafka_admin
from tributary.migrations import pending_migrations
from tributary.settings import Settings
from tributary.stack.postgres import ensure_database

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AIRFLOW = str(Path(sys.executable).parent / "airflow")


def _airflow(args: list[str], env: dict[str, str], timeout: int) -> str:
    result = subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"airflow {' '.join(args)} failed ({result.returncode}):\n{output[-4000:]}"
    return output


def test_bootstrap_dag_provisions_everything_then_reports_nothing_changed(settings: Settings) -> None:
    ensure_database(settings.airflow_db_url)
    env = airflow_environment(settings)
    _airflow(["db", "migrate"], env, timeout=240)

    first = _airflow(["dags", "test", "tributary_bootstrap"], env, timeout=300)
    assert "bootstrap: changed migrations" in first
    assert pending_migrations(settings.pg_url) == []
    topics = kafka_admin(settings).list_topics(timeout=10).topics
    assert {t.name for t in all_topics()} <= set(topics)
    es = es_client(settings)
    for index in all_indices():
        assert es.indices.get_index_template(name=index.template_name)["index_templates"]

    second = _airflow(["dags", "test", "tributary_bootstrap"], env, timeout=300)
    assert "bootstrap: nothing changed" in second, second[-3000:]
