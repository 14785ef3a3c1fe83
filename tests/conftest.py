"""Shared fixtures: a real Apache Kafka broker, ES-API server (osmem) and PostgreSQL.

The broker and the ES-API server are started once per session by the same component classes
`tributary up` uses, on free loopback ports (never 9092/9093/9200/8080, so a running `make up`
stack is left alone), with their data in throwaway directories, and stopped by PID at the end of
the session. PostgreSQL is the server of `TRIBUTARY_TEST_PG_URL` when one answers there; otherwise
the session starts a private cluster (Debian's binaries) on a free port in a throwaway directory
and stops it at the end. Each test that asks for `pg_url` gets a database of its own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import fields, replace
from pathlib import Path

import pytest

from tributary.settings import Settings, load_settings
from tributary.stack.broker import KafkaBroker
from tributary.stack.errors import StackError
from tributary.stack.ports import free_port
from tributary.stack.postgres import (
    database_name,
    database_url,
    drop_database,
    ensure_database,
    scratch_server,
)
from tributary.stack.search import OsmemSearch

DEFAULT_TEST_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
# Broker settings of the test brokers only (production keeps Kafka's defaults of minutes).
FAST_LOG_MAINTENANCE = {"log.retention.check.interval.ms": "1000", "log.cleaner.backoff.ms": "500"}

# The session-wide local SparkSession fixture `spark` (one JVM per test run), and
# `private_settings` (a broker and an ES-API server of a test's own).
pytest_plugins = ["tests.integration.spark_fixtures", "tests.integration.streaming_fixtures"]


def _session_settings(state_dir: Path, **overrides: object) -> Settings:
    """Settings for a session-wide service: defaults plus `overrides`, state under `state_dir`."""
    return replace(load_settings(), state_dir=state_dir, **overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """'127.0.0.1:PORT' of an Apache Kafka broker running for the whole session."""
    bootstrap = f"127.0.0.1:{free_port()}"
    broker = KafkaBroker(
        _session_settings(
            tmp_path_factory.mktemp("kafka"),
            kafka_bootstrap=bootstrap,
            kafka_controller_port=free_port(),
            embedded_kafka=True,
        ),
        progress=None,
        # Retention and the log cleaner act within a second or two, so tests can watch them.
        broker_config=FAST_LOG_MAINTENANCE,
    )
    broker.up()
    try:
        yield bootstrap
    finally:
        broker.down()


@pytest.fixture(scope="session")
def es_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """'http://127.0.0.1:PORT' of an osmem ES-API server running for the whole session."""
    url = f"http://127.0.0.1:{free_port()}"
    server = OsmemSearch(
        _session_settings(tmp_path_factory.mktemp("elasticsearch"), es_url=url, embedded_es=True, es_plain_json=True),
        progress=None,
    )
    server.up()
    try:
        yield url
    finally:
        server.down()


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database where tests may create databases.

    The server of TRIBUTARY_TEST_PG_URL (default: 127.0.0.1:5432) when it answers; otherwise a
    private cluster of this session's own, on a free port, removed at the end.
    """
    try:
        with scratch_server(
            os.environ.get("TRIBUTARY_TEST_PG_URL"), DEFAULT_TEST_PG_URL, setting="TRIBUTARY_TEST_PG_URL"
        ) as url:
            yield url
    except StackError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    """URL of a fresh database `tributary_test_<hex>`, dropped (WITH (FORCE)) after the test."""
    url = database_url(pg_server_url, f"tributary_test_{uuid.uuid4().hex[:12]}")
    ensure_database(url)
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture
def settings_env(
    kafka_bootstrap: str, es_url: str, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """TRIBUTARY_* variables pointing at the session's services, also set in os.environ.

    Kafka and Elasticsearch are *external* from the point of view of these settings (the session
    runs them): `tributary up` under this environment health-checks them and starts neither.
    Every other TRIBUTARY_* setting is removed from the environment, so its default applies.
    The Airflow metadata database `<pg_url db>_airflow` is only created if something (e.g. `up`)
    needs it, and is dropped after the test either way.
    """
    state_dir = tmp_path / "state"
    airflow_db_url = database_url(pg_url, f"{database_name(pg_url)}_airflow")
    env = {
        "TRIBUTARY_STATE_DIR": str(state_dir),
        "TRIBUTARY_PG_URL": pg_url,
        "TRIBUTARY_AIRFLOW_DB_URL": airflow_db_url,
        "TRIBUTARY_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "TRIBUTARY_EMBEDDED_KAFKA": "0",
        "TRIBUTARY_ES_URL": es_url,
        "TRIBUTARY_EMBEDDED_ES": "0",
        "TRIBUTARY_ES_PLAIN_JSON": "1",  # the session's ES-API server is osmem
        "TRIBUTARY_AIRFLOW_HOST": "127.0.0.1",
        "TRIBUTARY_AIRFLOW_PORT": str(free_port()),
        "TRIBUTARY_CHECKPOINT_ROOT": str(state_dir / "checkpoints"),
        "TRIBUTARY_LAKE_URI": str(state_dir / "lake"),
    }
    for f in fields(Settings):
        monkeypatch.delenv(f.metadata["env"], raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        yield env
    finally:
        drop_database(airflow_db_url)


@pytest.fixture
def settings(settings_env: dict[str, str]) -> Settings:
    """The `Settings` that `load_settings()` builds from `settings_env`."""
    return load_settings()
