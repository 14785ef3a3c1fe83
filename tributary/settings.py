"""Endpoints and paths: the one place every component reads them from.

Every value comes from an environment variable with a default that suits the embedded stack on
this machine. Pointing Tributary at a real Kafka, Elasticsearch 8 or PostgreSQL is a matter of
setting these variables (see README "Configuration"); no code changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent

# Defaults of the embedded stack; the ES client only sends plain JSON media types to the
# embedded server unless told otherwise (see `es_plain_json`).
DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_KAFKA_CONTROLLER_PORT = 9093
DEFAULT_CACHE_DIR = Path("~/.cache/tributary")
DEFAULT_ES_URL = "http://127.0.0.1:9200"
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/tributary"
DEFAULT_AIRFLOW_DB_URL = "postgresql://postgres@127.0.0.1:5432/tributary_airflow"

# Airflow connection ids the DAGs use; the embedded stack defines them from these settings
# (AIRFLOW_CONN_* env vars), production may define them in any secrets backend instead.
PG_CONN_ID = "tributary_postgres"
KAFKA_CONN_ID = "tributary_kafka"
# conn_type "spark": host = the Spark master (local[N], spark://host:port, k8s://https://host:port),
# extra = deploy options (see plugins/tributary_airflow/backends.py).
SPARK_CONN_ID = "tributary_spark"


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean: use 1/0, true/false, yes/no or on/off")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None


def _env_str(name: str, default: str) -> str:
    raw = os.environ.get(name)
    return default if raw is None or raw == "" else raw


def _env_path(name: str, default: Path) -> Path:
    raw = os.environ.get(name)
    return default if raw is None or raw == "" else Path(raw).expanduser().resolve()


@dataclass(frozen=True)
class Endpoint:
    """A host and port parsed from a URL or bootstrap string, with the setting it came from."""

    host: str
    port: int
    setting: str

    @property
    def is_loopback(self) -> bool:
        return self.host in {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Settings:
    """Resolved configuration. Build with `Settings.from_env()` (or `load_settings()`)."""

    state_dir: Path = field(
        metadata={"env": "TRIBUTARY_STATE_DIR", "doc": "Logs, PID files, checkpoints, private Postgres cluster"}
    )
    pg_url: str = field(
        metadata={"env": "TRIBUTARY_PG_URL", "doc": "PostgreSQL database for pipeline data (created if missing)"}
    )
    airflow_db_url: str = field(
        metadata={
            "env": "TRIBUTARY_AIRFLOW_DB_URL",
            "doc": "PostgreSQL database for Airflow metadata (created if missing)",
        }
    )
    kafka_bootstrap: str = field(
        metadata={
            "env": "TRIBUTARY_KAFKA_BOOTSTRAP",
            "doc": "Kafka bootstrap servers; the embedded broker listens here",
        }
    )
    kafka_replication_factor: int = field(
        metadata={
            "env": "TRIBUTARY_KAFKA_REPLICATION_FACTOR",
            "doc": "Replication factor for topics Tributary creates (3 on a production cluster)",
        }
    )
    embedded_kafka: bool = field(
        metadata={
            "env": "TRIBUTARY_EMBEDDED_KAFKA",
            "doc": "Start the embedded Apache Kafka broker (0 to use an external Kafka)",
        }
    )
    kafka_controller_port: int = field(
        metadata={
            "env": "TRIBUTARY_KAFKA_CONTROLLER_PORT",
            "doc": "KRaft controller port of the embedded broker (127.0.0.1 only)",
        }
    )
    kafka_heap: str = field(
        metadata={
            "env": "TRIBUTARY_KAFKA_HEAP",
            "doc": "Maximum JVM heap of the embedded broker (java -Xmx), e.g. 1g",
        }
    )
    cache_dir: Path = field(
        metadata={
            "env": "TRIBUTARY_CACHE_DIR",
            "doc": "Downloads shared by every checkout (the Kafka broker's jars), outside the repo",
        }
    )
    es_url: str = field(
        metadata={"env": "TRIBUTARY_ES_URL", "doc": "Elasticsearch URL; the embedded ES-API server listens here"}
    )
    embedded_es: bool = field(
        metadata={
            "env": "TRIBUTARY_EMBEDDED_ES",
            "doc": "Start the embedded osmem ES-API server (0 to use an external Elasticsearch)",
        }
    )
    es_plain_json: bool = field(
        metadata={
            "env": "TRIBUTARY_ES_PLAIN_JSON",
            "doc": "Send plain application/json (OpenSearch-compatible servers); default on only for the embedded server",
        }
    )
    es_username: str = field(
        metadata={"env": "TRIBUTARY_ES_USERNAME", "doc": "Elasticsearch basic-auth user (empty: no auth)"}
    )
    es_password: str = field(metadata={"env": "TRIBUTARY_ES_PASSWORD", "doc": "Elasticsearch basic-auth password"})
    airflow_host: str = field(
        metadata={"env": "TRIBUTARY_AIRFLOW_HOST", "doc": "Address the Airflow api-server binds to"}
    )
    airflow_port: int = field(
        metadata={"env": "TRIBUTARY_AIRFLOW_PORT", "doc": "Port of the Airflow api-server (UI and REST API)"}
    )
    airflow_user: str = field(
        metadata={"env": "TRIBUTARY_AIRFLOW_USER", "doc": "Admin user of Airflow's simple auth manager"}
    )
    spark_master: str = field(
        metadata={
            "env": "TRIBUTARY_SPARK_MASTER",
            "doc": "Spark master for jobs: local[*], spark://host:port or k8s://...",
        }
    )
    checkpoint_root: str = field(
        metadata={"env": "TRIBUTARY_CHECKPOINT_ROOT", "doc": "Root of Spark checkpoints (local path or Hadoop URI)"}
    )
    lake_uri: str = field(
        metadata={
            "env": "TRIBUTARY_LAKE_URI",
            "doc": "Data-lake root for compaction exports (local path or Hadoop URI)",
        }
    )
    demo_rate: float = field(
        default=20.0,
        metadata={
            "env": "TRIBUTARY_DEMO_RATE",
            "doc": "Events/s of the demo producer `up` starts (0: no producer)",
        },
    )

    @classmethod
    def from_env(cls) -> Settings:
        state_dir = _env_path("TRIBUTARY_STATE_DIR", REPO_ROOT / ".state")
        es_url = _env_str("TRIBUTARY_ES_URL", DEFAULT_ES_URL).rstrip("/")
        embedded_es = _env_bool("TRIBUTARY_EMBEDDED_ES", True)
        return cls(
            state_dir=state_dir,
            pg_url=_env_str("TRIBUTARY_PG_URL", DEFAULT_PG_URL),
            airflow_db_url=_env_str("TRIBUTARY_AIRFLOW_DB_URL", DEFAULT_AIRFLOW_DB_URL),
            kafka_bootstrap=_env_str("TRIBUTARY_KAFKA_BOOTSTRAP", DEFAULT_KAFKA_BOOTSTRAP),
            kafka_replication_factor=_env_int("TRIBUTARY_KAFKA_REPLICATION_FACTOR", 1),
            embedded_kafka=_env_bool("TRIBUTARY_EMBEDDED_KAFKA", True),
            kafka_controller_port=_env_int("TRIBUTARY_KAFKA_CONTROLLER_PORT", DEFAULT_KAFKA_CONTROLLER_PORT),
            kafka_heap=_env_str("TRIBUTARY_KAFKA_HEAP", "1g"),
            cache_dir=_env_path("TRIBUTARY_CACHE_DIR", DEFAULT_CACHE_DIR.expanduser()),
            es_url=es_url,
            embedded_es=embedded_es,
            # Real Elasticsearch 8 wants its versioned media type; the embedded (OpenSearch-like)
            # server refuses it, so plain JSON is the default only when we run that server.
            es_plain_json=_env_bool("TRIBUTARY_ES_PLAIN_JSON", embedded_es),
            es_username=_env_str("TRIBUTARY_ES_USERNAME", ""),
            es_password=_env_str("TRIBUTARY_ES_PASSWORD", ""),
            airflow_host=_env_str("TRIBUTARY_AIRFLOW_HOST", "127.0.0.1"),
            airflow_port=_env_int("TRIBUTARY_AIRFLOW_PORT", 8080),
            airflow_user=_env_str("TRIBUTARY_AIRFLOW_USER", "admin"),
            spark_master=_env_str("TRIBUTARY_SPARK_MASTER", "local[2]"),
            checkpoint_root=_env_str("TRIBUTARY_CHECKPOINT_ROOT", str(state_dir / "checkpoints")),
            lake_uri=_env_str("TRIBUTARY_LAKE_URI", str(state_dir / "lake")),
            demo_rate=_env_float("TRIBUTARY_DEMO_RATE", 20.0),
        )

    # Endpoints, each naming the setting to change when its port is taken or unreachable.
    @property
    def kafka_endpoint(self) -> Endpoint:
        first = self.kafka_bootstrap.split(",")[0].strip()
        host, _, port = first.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"TRIBUTARY_KAFKA_BOOTSTRAP={self.kafka_bootstrap!r} is not host:port[,host:port...]")
        return Endpoint(host.strip("[]"), int(port), "TRIBUTARY_KAFKA_BOOTSTRAP")

    @property
    def kafka_controller_endpoint(self) -> Endpoint:
        return Endpoint(self.kafka_endpoint.host, self.kafka_controller_port, "TRIBUTARY_KAFKA_CONTROLLER_PORT")

    @property
    def es_endpoint(self) -> Endpoint:
        return _url_endpoint(self.es_url, 9200, "TRIBUTARY_ES_URL")

    @property
    def pg_endpoint(self) -> Endpoint:
        return _url_endpoint(self.pg_url, 5432, "TRIBUTARY_PG_URL")

    @property
    def airflow_endpoint(self) -> Endpoint:
        return Endpoint(self.airflow_host, self.airflow_port, "TRIBUTARY_AIRFLOW_PORT")

    @property
    def airflow_url(self) -> str:
        return f"http://{self.airflow_host}:{self.airflow_port}"

    @property
    def airflow_home(self) -> Path:
        return self.state_dir / "airflow"

    def describe(self) -> list[tuple[str, str, str]]:
        """(environment variable, current value, meaning) for every setting; secrets masked."""
        rows = []
        for f in fields(self):
            value = getattr(self, f.name)
            shown = "***" if "password" in f.name and value else str(value)
            rows.append((f.metadata["env"], shown, f.metadata["doc"]))
        return rows


def _url_endpoint(url: str, default_port: int, setting: str) -> Endpoint:
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"{setting}={url!r} has no host: expected scheme://host[:port]/...")
    return Endpoint(parts.hostname, parts.port or default_port, setting)


def load_settings() -> Settings:
    """Settings from the current environment (re-read on every call, so tests can monkeypatch)."""
    return Settings.from_env()
