"""Clients for the platform's services, built from settings through the official libraries only."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
from confluent_kafka.admin import AdminClient
from elastic_transport import HttpHeaders, Urllib3HttpNode
from elasticsearch import Elasticsearch

from tributary.settings import Settings

_VENDOR_MEDIA_TYPE = re.compile(r"application/vnd\.elasticsearch\+([\w-]+);\s*compatible-with=\d+")


class PlainJsonNode(Urllib3HttpNode):
    """HTTP node that sends `application/json` / `application/x-ndjson` instead of ES vendor types.

    The 8.x client always rewrites media types to `application/vnd.elasticsearch+json;
    compatible-with=8`, which OpenSearch-compatible servers (the embedded one) refuse with 406.
    A node class is the client's public extension point for the wire, so the rewrite lives here.
    """

    def perform_request(  # type: ignore[override]  # forwards request_timeout untouched
        self, method: str, target: str, body: bytes | None = None, headers: HttpHeaders | None = None, **kwargs: Any
    ) -> Any:
        if headers:
            plain = HttpHeaders(headers)
            for name in ("accept", "content-type"):
                if name in plain:
                    plain[name] = _VENDOR_MEDIA_TYPE.sub(r"application/\1", plain[name])
            headers = plain
        return super().perform_request(method, target, body=body, headers=headers, **kwargs)


def es_client(settings: Settings, *, request_timeout: float = 30.0) -> Elasticsearch:
    """An Elasticsearch client for `settings.es_url`.

    With `es_plain_json` the client sends plain JSON media types, which the embedded server (and
    OpenSearch) require; bulk bodies still go out as NDJSON because the client sets that per call.
    """
    kwargs: dict[str, Any] = {"request_timeout": request_timeout}
    if settings.es_username:
        kwargs["basic_auth"] = (settings.es_username, settings.es_password)
    if settings.es_plain_json:
        kwargs["node_class"] = PlainJsonNode
    return Elasticsearch(settings.es_url, **kwargs)


def kafka_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Base librdkafka configuration for every Tributary client."""
    config: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap}
    config.update(overrides)
    return config


def kafka_admin(settings: Settings) -> AdminClient:
    return AdminClient(kafka_config(settings))


def pg_connect(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """A psycopg 3 connection; `url` may use the SQLAlchemy-style `postgresql+psycopg://` scheme."""
    return psycopg.connect(plain_pg_url(url), **kwargs)


def plain_pg_url(url: str) -> str:
    """`postgresql+driver://...` -> `postgresql://...` (libpq does not know driver suffixes)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"{url!r} is not a PostgreSQL URL (expected postgresql://user@host:port/db)")
    return "postgresql://" + rest if scheme.startswith("postgres") else url


def jdbc_url(url: str) -> tuple[str, dict[str, str]]:
    """(JDBC URL, connection properties) for Spark's JDBC reader, from a PostgreSQL URL."""
    parts = urlsplit(plain_pg_url(url))
    if not parts.hostname:
        raise ValueError(f"{url!r} has no host; expected postgresql://user@host:port/db")
    properties = {"driver": "org.postgresql.Driver", "user": unquote(parts.username or "postgres")}
    if parts.password:
        properties["password"] = unquote(parts.password)
    return f"jdbc:postgresql://{parts.hostname}:{parts.port or 5432}{parts.path or '/postgres'}", properties
