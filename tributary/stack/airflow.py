"""Airflow 3: metadata-DB migration and the four long-running processes (LocalExecutor).

Each process is its own component (own log and PID file); all four are healthy when Airflow's
`/api/v2/monitor/health` says so for the part it reports on.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Mapping

from tributary.airflow_env import airflow_environment
from tributary.settings import Endpoint, Settings
from tributary.stack.component import ProcessComponent, python_bin
from tributary.stack.errors import BinaryMissingError, StackError
from tributary.stack.health import Progress, airflow_probe
from tributary.stack.paths import StatePaths
from tributary.stack.postgres import redact_url
from tributary.stack.processes import tail

log = logging.getLogger(__name__)

MIGRATE_TIMEOUT = 300.0


def airflow_executable() -> str:
    """The `airflow` CLI of this interpreter's environment."""
    path = python_bin("airflow")
    if not path.exists():
        raise BinaryMissingError(
            f"airflow: {path} not found: install Airflow into this environment "
            "(`pip install apache-airflow==3.3.2`, or `make setup`)"
        )
    return str(path)


class AirflowProcess(ProcessComponent):
    """One `airflow <role>` process; healthy when the health report says `health_key` is healthy."""

    package = "apache-airflow"
    health_timeout = 60.0
    role = ""
    health_key = ""

    @property
    def endpoint_text(self) -> str:
        return self.settings.airflow_url

    def arguments(self) -> list[str]:
        """Arguments after `airflow <role>`."""
        return []

    def command(self) -> list[str]:
        return [airflow_executable(), self.role, *self.arguments()]

    def environment(self) -> Mapping[str, str]:
        return airflow_environment(self.settings)

    def probe(self) -> None:
        airflow_probe(self.settings.airflow_url, self.health_key)()


class AirflowApiServer(AirflowProcess):
    """UI, REST API and the execution API that task supervisors call."""

    name = "airflow-api-server"
    role = "api-server"
    health_key = "metadatabase"

    @property
    def listen(self) -> Endpoint:
        return self.settings.airflow_endpoint

    def arguments(self) -> list[str]:
        return ["--host", self.settings.airflow_host, "--port", str(self.settings.airflow_port)]

    def launch(self) -> None:
        if self.embedded and not self.settings.airflow_endpoint.is_loopback and self.progress:
            self.progress(
                f"{self.name}: warning: serving on {self.settings.airflow_host}, beyond loopback "
                "(TRIBUTARY_AIRFLOW_HOST); the simple auth manager is for development only"
            )
        super().launch()


class AirflowScheduler(AirflowProcess):
    name = "airflow-scheduler"
    role = "scheduler"
    health_key = "scheduler"

    def arguments(self) -> list[str]:
        # The log server would listen on 0.0.0.0:8793; the api-server reads task logs from disk.
        return ["--skip-serve-logs"]


class AirflowDagProcessor(AirflowProcess):
    name = "airflow-dag-processor"
    role = "dag-processor"
    health_key = "dag_processor"


class AirflowTriggerer(AirflowProcess):
    name = "airflow-triggerer"
    role = "triggerer"
    health_key = "triggerer"

    def arguments(self) -> list[str]:
        # The log server would listen on 0.0.0.0:8794.
        return ["--skip-serve-logs"]


AIRFLOW_COMPONENTS: tuple[type[AirflowProcess], ...] = (
    AirflowApiServer,
    AirflowScheduler,
    AirflowDagProcessor,
    AirflowTriggerer,
)


def migrate_metadata_db(settings: Settings, progress: Progress | None) -> None:
    """`airflow db migrate` (idempotent): create or upgrade the metadata schema."""
    log_path = StatePaths(settings.state_dir).log("airflow-db-migrate")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        progress("airflow: migrating the metadata database ...")
    started = time.monotonic()
    with open(log_path, "ab") as out:
        try:
            result = subprocess.run(
                [airflow_executable(), "db", "migrate"],
                env=airflow_environment(settings),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=MIGRATE_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise StackError(
                f"airflow: `airflow db migrate` did not finish within {MIGRATE_TIMEOUT:.0f}s; see {log_path}"
            ) from exc
    if result.returncode != 0:
        raise StackError(
            f"airflow: `airflow db migrate` failed (exit {result.returncode}) against "
            f"TRIBUTARY_AIRFLOW_DB_URL={redact_url(settings.airflow_db_url)}; last lines of {log_path}:\n{tail(log_path)}"
        )
    log.info("airflow db migrate took %.1fs", time.monotonic() - started)
    if progress:
        progress(f"airflow: metadata database ready ({time.monotonic() - started:.0f}s)")
