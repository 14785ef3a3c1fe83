"""Idempotent provisioning of Kafka topics and Elasticsearch index templates from the catalog.

Each step compares what exists with the catalog and changes only the difference, so running it
again reports every object "unchanged".
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourceType,
)
from elasticsearch import Elasticsearch, NotFoundError

from tributary.catalog import Index, Topic

log = logging.getLogger(__name__)

Action = Literal["created", "updated", "unchanged"]

# Stored in each template's `_meta`, so "unchanged" is decided on what we wrote, not on how a
# server chooses to echo settings back (strings vs numbers, nested vs flat keys).
TEMPLATE_DIGEST_KEY = "tributary_template_sha256"


class ProvisioningError(RuntimeError):
    """A catalog object could not be brought to its declared state; the message says what to do."""


@dataclass(frozen=True)
class ProvisionResult:
    kind: Literal["topic", "index_template"]
    name: str
    action: Action
    detail: str = ""

    def line(self) -> str:
        suffix = f" ({self.detail})" if self.detail else ""
        return f"{self.kind} {self.name}: {self.action}{suffix}"


def _kafka_error(exc: BaseException) -> KafkaError | None:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def ensure_topics(
    admin: AdminClient,
    topics: Sequence[Topic],
    *,
    replication_factor: int = 1,
    timeout_s: float = 15.0,
) -> list[ProvisionResult]:
    """Create missing topics with their configs; align partitions and configs of existing ones."""
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise ProvisioningError(
            f"cannot list Kafka topics: {exc}; is the broker running and TRIBUTARY_KAFKA_BOOTSTRAP right?"
        ) from exc

    results: dict[str, ProvisionResult] = {}
    missing = [t for t in topics if t.name not in existing]
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(t.name, num_partitions=t.partitions, replication_factor=replication_factor, config=t.configs())
                for t in missing
            ],
            request_timeout=timeout_s,
        )
        for topic in missing:
            try:
                futures[topic.name].result()
            except KafkaException as exc:
                error = _kafka_error(exc)
                if error is not None and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue  # created concurrently: compared below like any existing topic
                raise ProvisioningError(
                    f"creating topic {topic.name} ({topic.partitions} partitions, replication "
                    f"{replication_factor}) failed: {exc}; check TRIBUTARY_KAFKA_REPLICATION_FACTOR "
                    "against the number of brokers"
                ) from exc
            log.info("topic %s created with %s partitions", topic.name, topic.partitions)
            results[topic.name] = ProvisionResult("topic", topic.name, "created", f"{topic.partitions} partitions")

    to_compare = [t for t in topics if t.name not in results]
    if to_compare:
        partition_counts = {
            name: len(md.partitions) for name, md in admin.list_topics(timeout=timeout_s).topics.items()
        }
        current_configs = _describe_topic_configs(admin, [t.name for t in to_compare], timeout_s)
        for topic in to_compare:
            results[topic.name] = _align_topic(
                admin, topic, partition_counts[topic.name], current_configs[topic.name], timeout_s
            )
    return [results[t.name] for t in topics]


def _describe_topic_configs(admin: AdminClient, names: list[str], timeout_s: float) -> dict[str, dict[str, str | None]]:
    futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, n) for n in names], request_timeout=timeout_s)
    configs: dict[str, dict[str, str | None]] = {}
    for resource, future in futures.items():
        entries = future.result()
        configs[resource.name] = {key: entry.value for key, entry in entries.items()}
    return configs


def _align_topic(
    admin: AdminClient, topic: Topic, partitions: int, current: dict[str, str | None], timeout_s: float
) -> ProvisionResult:
    details: list[str] = []
    if partitions < topic.partitions:
        added = admin.create_partitions([NewPartitions(topic.name, topic.partitions)], request_timeout=timeout_s)
        try:
            added[topic.name].result()
        except KafkaException as exc:
            raise ProvisioningError(
                f"topic {topic.name} has {partitions} partitions, the catalog wants {topic.partitions}, and the "
                f"broker refused to add partitions ({exc}); fix the cause the broker names, or lower "
                "`partitions` in tributary/catalog.py"
            ) from exc
        details.append(f"partitions {partitions} -> {topic.partitions}")
    elif partitions > topic.partitions:
        # Kafka cannot remove partitions; more than declared is harmless for the jobs.
        log.warning(
            "topic %s has %s partitions, more than the %s in the catalog", topic.name, partitions, topic.partitions
        )

    wanted = topic.configs()
    drift = {key: value for key, value in wanted.items() if current.get(key) != value}
    if drift:
        entries = [ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET) for key, value in drift.items()]
        futures = admin.incremental_alter_configs(
            [ConfigResource(ResourceType.TOPIC, topic.name, incremental_configs=entries)], request_timeout=timeout_s
        )
        for f in futures.values():
            f.result()
        details.extend(f"{key} {current.get(key)} -> {value}" for key, value in drift.items())

    if details:
        log.info("topic %s updated: %s", topic.name, "; ".join(details))
        return ProvisionResult("topic", topic.name, "updated", "; ".join(details))
    return ProvisionResult("topic", topic.name, "unchanged")


def template_digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def ensure_index_templates(es: Elasticsearch, indices: Sequence[Index]) -> list[ProvisionResult]:
    """Put each index family's composable template unless the stored one has the same digest."""
    results = []
    for index in indices:
        body = index.template_body()
        digest = template_digest(body)
        try:
            found = es.indices.get_index_template(name=index.template_name)["index_templates"]
        except NotFoundError:
            found = []
        existed = bool(found)
        stored_meta = (found[0]["index_template"].get("_meta") or {}) if found else {}
        if stored_meta.get(TEMPLATE_DIGEST_KEY) == digest:
            results.append(ProvisionResult("index_template", index.template_name, "unchanged"))
            continue
        es.indices.put_index_template(
            name=index.template_name,
            index_patterns=body["index_patterns"],
            priority=body["priority"],
            template=body["template"],
            meta={"managed_by": "tributary", TEMPLATE_DIGEST_KEY: digest},
        )
        action: Action = "updated" if existed else "created"
        log.info("index template %s %s (pattern %s)", index.template_name, action, index.pattern)
        results.append(ProvisionResult("index_template", index.template_name, action, f"pattern {index.pattern}"))
    return results
