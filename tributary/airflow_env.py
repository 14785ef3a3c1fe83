"""The environment of every Airflow process and `airflow` CLI call, derived from `Settings`.

All Airflow configuration is passed as `AIRFLOW__SECTION__KEY` variables (names checked against
Airflow 3.3's config.yml), so the `airflow.cfg` Airflow writes into AIRFLOW_HOME on first start
is never the source of truth. Secrets shared by the components (JWT secret, fernet key, API
secret key) are generated once into `state_dir/secrets/` so that every process agrees on them.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from tributary.clients import plain_pg_url
from tributary.settings import KAFKA_CONN_ID, PG_CONN_ID, REPO_ROOT, SPARK_CONN_ID, Settings

DAGS_FOLDER = REPO_ROOT / "dags"
PLUGINS_FOLDER = REPO_ROOT / "plugins"


def passwords_file(settings: Settings) -> Path:
    """Where the simple auth manager keeps the generated password of each user (JSON)."""
    return settings.airflow_home / "simple_auth_manager_passwords.json.generated"


def admin_password(settings: Settings) -> str | None:
    """The generated password of `settings.airflow_user`, or None before the api-server made it."""
    try:
        passwords: dict[str, str] = json.loads(passwords_file(settings).read_text())
    except FileNotFoundError:
        return None
    return passwords.get(settings.airflow_user)


def airflow_environment(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The full environment (`base`, default os.environ, plus Airflow config) for Airflow processes.

    Creates the state directories Airflow writes to, and the shared secrets on first call.
    """
    state = settings.state_dir
    logs = state / "logs" / "airflow"
    for directory in (settings.airflow_home, logs):
        directory.mkdir(parents=True, exist_ok=True)
    sync_db_url = "postgresql+psycopg2://" + plain_pg_url(settings.airflow_db_url).partition("://")[2]
    inherited_path = (base if base is not None else os.environ).get("PYTHONPATH", "")

    env = dict(base if base is not None else os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(settings.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS_FOLDER),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            # The async engine Airflow derives from this (postgresql+asyncpg) needs no entry.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sync_db_url,
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{settings.airflow_user}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file(settings)),
            # [api] host defaults to 0.0.0.0; the stack serves on the configured (loopback) host.
            "AIRFLOW__API__HOST": settings.airflow_host,
            "AIRFLOW__API__PORT": str(settings.airflow_port),
            # Task supervisors talk to the api-server here (default: http://localhost:8080/...).
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{settings.airflow_url}/execution/",
            # Without fixed values each component would generate its own and reject the others'.
            "AIRFLOW__API_AUTH__JWT_SECRET": _secret(settings, "airflow-jwt-secret", _token),
            "AIRFLOW__API__SECRET_KEY": _secret(settings, "airflow-api-secret-key", _token),
            "AIRFLOW__CORE__FERNET_KEY": _secret(settings, "airflow-fernet-key", _fernet_key),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(logs),
            "AIRFLOW__LOGGING__DAG_PROCESSOR_CHILD_PROCESS_LOG_DIRECTORY": str(logs / "dag_processor"),
            # Default is $TMPDIR/airflow, shared by every Airflow on the machine.
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH": str(settings.airflow_home / "dag_bundles"),
            # New DAG files show up within 30 s instead of the default 5 minutes.
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            f"AIRFLOW_CONN_{PG_CONN_ID.upper()}": postgres_connection(settings.pg_url),
            f"AIRFLOW_CONN_{KAFKA_CONN_ID.upper()}": kafka_connection(settings.kafka_bootstrap),
            f"AIRFLOW_CONN_{SPARK_CONN_ID.upper()}": spark_connection(settings.spark_master),
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), inherited_path) if p),
        }
    )
    env.update(tributary_environment(settings))
    return env


def tributary_environment(settings: Settings) -> dict[str, str]:
    """TRIBUTARY_* variables that make `load_settings()` in DAG code return `settings`."""
    env = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        env[f.metadata["env"]] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    return env


def postgres_connection(url: str) -> str:
    """Airflow connection (JSON form) of type `postgres` for a PostgreSQL URL; query -> extra."""
    parts = urlsplit(plain_pg_url(url))
    conn: dict[str, object] = {
        "conn_type": "postgres",
        "host": parts.hostname or "",
        "port": parts.port or 5432,
        "login": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),
        "schema": unquote(parts.path.lstrip("/")),  # Airflow calls the database "schema"
    }
    extra = dict(parse_qsl(parts.query))
    if extra:
        conn["extra"] = extra
    return json.dumps(conn)


def kafka_connection(bootstrap: str) -> str:
    """Airflow connection (JSON form) of the apache-kafka provider's type `kafka`."""
    return json.dumps({"conn_type": "kafka", "extra": {"bootstrap.servers": bootstrap}})


def spark_connection(master: str) -> str:
    """Airflow connection (JSON form) of type `spark` whose host is the Spark master URL."""
    return json.dumps({"conn_type": "spark", "host": master})


def _token() -> str:
    return secrets.token_urlsafe(32)


def _fernet_key() -> str:
    # The format cryptography's Fernet.generate_key() produces: urlsafe base64 of 32 random bytes.
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def _secret(settings: Settings, name: str, generate: Callable[[], str]) -> str:
    """The secret `name` from `state_dir/secrets/`, generated (readable by us only) on first use."""
    path = settings.state_dir / "secrets" / name
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(generate() + "\n")
    try:
        # link() fails if the name exists: a concurrent `up` that got there first wins, and both
        # processes then read the same, complete value.
        os.link(tmp, path)
    except FileExistsError:
        pass  # the other writer's value is read below
    finally:
        tmp.unlink()
    return path.read_text().strip()
