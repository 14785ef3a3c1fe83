"""The Airflow environment: real config names, shared secrets, connections, TRIBUTARY_* round trip."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from tributary.airflow_env import airflow_environment, kafka_connection, postgres_connection
from tributary.settings import REPO_ROOT, Settings, load_settings

# Located without importing airflow: the import would initialise an AIRFLOW_HOME (~/airflow).
_AIRFLOW_SPEC = importlib.util.find_spec("airflow")
assert _AIRFLOW_SPEC is not None and _AIRFLOW_SPEC.submodule_search_locations
CONFIG_YML = Path(next(iter(_AIRFLOW_SPEC.submodule_search_locations))) / "config_templates" / "config.yml"
# The Connection test imports Airflow, which writes its config into AIRFLOW_HOME.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="tributary-airflow-home-"))


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Default settings with the state under tmp_path (no services needed)."""
    monkeypatch.setenv("TRIBUTARY_STATE_DIR", str(tmp_path / "state"))
    return replace(load_settings(), airflow_db_url="postgresql+psycopg://af:pw@db.example:6543/meta")


def test_every_airflow_variable_is_a_real_airflow_option(settings: Settings) -> None:
    """Guards against guessed names: each AIRFLOW__SECTION__KEY exists in Airflow's config.yml."""
    config = yaml.safe_load(CONFIG_YML.read_text())
    env = airflow_environment(settings, base={})
    names = [name for name in env if name.startswith("AIRFLOW__")]
    assert len(names) >= 15
    for name in names:
        _, section, key = name.lower().split("__", 2)
        assert key in config[section]["options"], f"{name}: no [{section}] {key} in Airflow 3.3"


def test_core_configuration(settings: Settings) -> None:
    env = airflow_environment(settings, base={"PYTHONPATH": "/elsewhere", "LANG": "C.UTF-8"})
    assert env["AIRFLOW_HOME"] == str(settings.state_dir / "airflow")
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(REPO_ROOT / "dags")
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == "postgresql+psycopg2://af:pw@db.example:6543/meta"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin"
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8080/execution/"
    assert env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"].startswith(str(settings.state_dir))
    assert env["PYTHONPATH"].split(":") == [str(REPO_ROOT), "/elsewhere"]
    assert env["LANG"] == "C.UTF-8"


def test_secrets_are_generated_once_and_private(settings: Settings) -> None:
    first = airflow_environment(settings, base={})
    second = airflow_environment(settings, base={})
    for name in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API__SECRET_KEY"):
        assert first[name] and first[name] == second[name]
    for path in (settings.state_dir / "secrets").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_fernet_key_is_valid() -> None:
    from cryptography.fernet import Fernet

    from tributary.airflow_env import _fernet_key

    Fernet(_fernet_key().encode())  # raises on a malformed key


def test_connections(settings: Settings) -> None:
    env = airflow_environment(settings, base={})
    assert json.loads(env["AIRFLOW_CONN_TRIBUTARY_KAFKA"]) == {
        "conn_type": "kafka",
        "extra": {"bootstrap.servers": settings.kafka_bootstrap},
    }
    pg = json.loads(env["AIRFLOW_CONN_TRIBUTARY_POSTGRES"])
    assert pg["conn_type"] == "postgres" and pg["schema"] == "tributary"


def test_postgres_connection_keeps_password_and_options() -> None:
    conn = json.loads(postgres_connection("postgresql+psycopg://u:p%40ss@h:6000/db?sslmode=require"))
    assert conn == {
        "conn_type": "postgres",
        "host": "h",
        "port": 6000,
        "login": "u",
        "password": "p@ss",
        "schema": "db",
        "extra": {"sslmode": "require"},
    }


def test_airflow_parses_the_connections_as_meant() -> None:
    from airflow.models.connection import Connection

    kafka = Connection.from_json(kafka_connection("127.0.0.1:9"))
    assert kafka.conn_type == "kafka" and kafka.extra_dejson == {"bootstrap.servers": "127.0.0.1:9"}
    pg = Connection.from_json(postgres_connection("postgresql://u:p@h:6000/db"))
    assert (pg.conn_type, pg.host, pg.port, pg.login, pg.password, pg.schema) == ("postgres", "h", 6000, "u", "p", "db")


def test_dag_code_loads_the_same_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    env = airflow_environment(settings, base={})
    for name, value in env.items():
        if name.startswith("TRIBUTARY_"):
            monkeypatch.setenv(name, value)
    assert load_settings() == settings
