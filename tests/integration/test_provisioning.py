"""Provisioning against the real broker (Tansu) and the real ES-API server (osmem)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import pytest
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType
from elasticsearch import helpers

from tributary import bootstrap
from tributary.catalog import USER_EVENTS, Topic, all_indices, all_topics
from tributary.clients import es_client, kafka_admin
from tributary.provisioning import ensure_index_templates, ensure_topics
from tributary.settings import Settings

pytestmark = pytest.mark.integration


def _unique_topics(prefix: str) -> list[Topic]:
    return [Topic(f"{prefix}_{t.name}", t.partitions, t.retention_ms, t.cleanup_policy) for t in all_topics()]


def test_topics_are_created_once_then_unchanged(settings: Settings, request: pytest.FixtureRequest) -> None:
    topics = _unique_topics(request.node.name[:20])
    admin = kafka_admin(settings)
    first = ensure_topics(admin, topics)
    assert [r.action for r in first] == ["created"] * len(topics)
    second = ensure_topics(admin, topics)
    assert [r.action for r in second] == ["unchanged"] * len(topics)
    metadata = admin.list_topics(timeout=10).topics
    for topic in topics:
        assert len(metadata[topic.name].partitions) == topic.partitions


def test_config_drift_is_put_back(settings: Settings) -> None:
    topic = Topic("drift_check", partitions=2, retention_ms=3_600_000)
    admin = kafka_admin(settings)
    ensure_topics(admin, [topic])
    drifted = ConfigResource(
        ResourceType.TOPIC,
        topic.name,
        incremental_configs=[ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)],
    )
    for future in admin.incremental_alter_configs([drifted]).values():
        future.result()
    (result,) = ensure_topics(admin, [topic])
    assert result.action == "updated" and "retention.ms 1000 -> 3600000" in result.detail
    assert ensure_topics(admin, [topic])[0].action == "unchanged"


def test_index_templates_are_put_once_then_unchanged(settings: Settings, request: pytest.FixtureRequest) -> None:
    es = es_client(settings)
    # Names of their own: other tests put the catalog's templates on the same session server.
    indices = [replace(index, base=f"t{request.node.name[:12].lower()}-{index.base}") for index in all_indices()]
    assert [r.action for r in ensure_index_templates(es, indices)] == ["created"] * len(indices)
    assert [r.action for r in ensure_index_templates(es, indices)] == ["unchanged"] * len(indices)
    changed = replace(indices[0], replicas=indices[0].replicas + 1)
    assert ensure_index_templates(es, [changed])[0].action == "updated"


def test_template_applies_to_daily_indices_and_ids_are_idempotent(settings: Settings) -> None:
    """The plain-JSON client talks bulk to the embedded server; a re-sent `_id` is a 409, not a copy."""
    es = es_client(settings)
    events = USER_EVENTS.indices["events"]
    ensure_index_templates(es, [events])
    index = events.index_for(date(2026, 11, 23))
    doc = {"topic": "user_events", "kafka_partition": 0, "kafka_offset": 1, "user_id": 7, "action": "view"}
    actions = [{"_op_type": "create", "_index": index, "_id": "user_events-0-1", **doc}]
    assert helpers.bulk(es, actions, raise_on_error=False, refresh="wait_for")[0] == 1
    ok, errors = helpers.bulk(es, actions, raise_on_error=False, refresh="wait_for")
    assert ok == 0 and [e["create"]["status"] for e in errors] == [409]  # type: ignore[index]
    assert es.count(index=index)["count"] == 1
    mapping = es.indices.get_mapping(index=index)[index]["mappings"]
    assert mapping["properties"]["action"]["type"] == "keyword"


def test_bootstrap_steps_report_nothing_changed_the_second_time(settings: Settings, pg_url: str) -> None:
    def run() -> list[dict[str, object]]:
        return [
            bootstrap.migrate(pg_url).to_dict(),
            bootstrap.create_topics(kafka_admin(settings), settings.kafka_replication_factor).to_dict(),
            bootstrap.put_index_templates(es_client(settings)).to_dict(),
        ]

    run()
    assert bootstrap.summarize(run()) == "bootstrap: nothing changed"
