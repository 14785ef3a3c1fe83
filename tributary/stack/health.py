"""Health probes of the platform's services and the wait loop that polls them.

A probe returns None when healthy and raises `Unhealthy` with the reason otherwise (client errors
are translated, so callers need to catch nothing else); `wait_healthy` turns a process exit or a timeout into a StackError carrying the log.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from elastic_transport import TransportError
from elasticsearch import ApiError

from tributary.clients import es_client
from tributary.settings import Settings
from tributary.stack.errors import ComponentExitedError, HealthTimeoutError
from tributary.stack.processes import PidRecord, tail

Probe = Callable[[], None]
Progress = Callable[[str], None]

# Airflow components whose status /api/v2/monitor/health reports.
AIRFLOW_HEALTH_KEYS = ("metadatabase", "scheduler", "dag_processor", "triggerer")


class Unhealthy(Exception):
    """A probe's verdict: the service answers but is not (yet) healthy, or does not answer."""


def tcp_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def kafka_probe(bootstrap: str, timeout: float = 3.0) -> None:
    """Healthy when the broker answers a metadata request within `timeout` seconds."""
    errors: list[KafkaError] = []
    # error_cb keeps librdkafka's connection-refused chatter out of the terminal while waiting;
    # the errors still end up in the message below.
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "error_cb": errors.append,
        "socket.connection.setup.timeout.ms": int(timeout * 1000),
    }
    admin = AdminClient(config)
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        detail = f"; {errors[-1].str()}" if errors else ""
        raise Unhealthy(f"no metadata from Kafka at {bootstrap}: {exc.args[0].str()}{detail}") from exc
    if not metadata.brokers:
        raise Unhealthy(f"Kafka at {bootstrap} reports no brokers")


def es_probe(settings: Settings) -> None:
    """Healthy when the Elasticsearch API at `settings.es_url` answers the info request."""
    client = es_client(settings, request_timeout=3.0)
    try:
        info = client.info()
    except (ApiError, TransportError) as exc:
        raise Unhealthy(f"no answer from Elasticsearch at {settings.es_url}: {exc}") from exc
    finally:
        client.close()
    if "version" not in info:
        raise Unhealthy(f"{settings.es_url} answered info() without a version: {dict(info)}")


def airflow_health(airflow_url: str, timeout: float = 3.0) -> dict[str, Any]:
    """The JSON body of `GET {airflow_url}/api/v2/monitor/health` (the endpoint needs no auth)."""
    url = f"{airflow_url}/api/v2/monitor/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body: dict[str, Any] = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise Unhealthy(f"no health report from {url}: {exc}") from exc
    return body


def airflow_probe(airflow_url: str, key: str) -> Probe:
    """A probe that is healthy when Airflow's health report says `key` is healthy."""

    def probe() -> None:
        report = airflow_health(airflow_url)
        status = (report.get(key) or {}).get("status")
        if status != "healthy":
            raise Unhealthy(f"Airflow reports {key} as {status or 'missing'}: {report.get(key)}")

    return probe


def wait_healthy(
    name: str,
    probe: Probe,
    *,
    timeout: float,
    log_path: Path | None,
    process: PidRecord | None = None,
    progress: Progress | None = None,
    interval: float = 0.5,
    report_every: float = 3.0,
) -> None:
    """Poll `probe` until it passes; fail early if `process` exits, or after `timeout` seconds."""
    started = time.monotonic()
    last_report = started
    while True:
        try:
            probe()
            return
        except Unhealthy as exc:
            last_error = exc
        elapsed = time.monotonic() - started
        if process is not None and not process.is_alive():
            raise ComponentExitedError(
                f"{name} exited during startup (pid {process.pid}); last lines of {log_path}:\n"
                f"{_indent(tail(log_path)) if log_path else ''}"
            )
        if elapsed >= timeout:
            log_hint = f"; last lines of {log_path}:\n{_indent(tail(log_path))}" if log_path else ""
            raise HealthTimeoutError(f"{name} not healthy after {timeout:.0f}s: {last_error}{log_hint}")
        if progress is not None and time.monotonic() - last_report >= report_every:
            progress(f"waiting for {name} ... {elapsed:.0f}s")
            last_report = time.monotonic()
        time.sleep(interval)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
