"""The bootstrap steps (migrations, topics, index templates), shared by the DAG and the CLI."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from confluent_kafka.admin import AdminClient
from elasticsearch import Elasticsearch

from tributary.catalog import all_indices, all_topics
from tributary.migrations import apply_migrations
from tributary.provisioning import ProvisionResult, ensure_index_templates, ensure_topics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepReport:
    """What one bootstrap step did; `changed` is False when everything was already in place."""

    step: str
    changed: bool
    lines: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def log(self) -> None:
        log.info("%s: %s", self.step, "changed" if self.changed else "unchanged")
        for line in self.lines:
            log.info("  %s", line)


def _from_results(step: str, results: list[ProvisionResult]) -> StepReport:
    return StepReport(step, any(r.action != "unchanged" for r in results), [r.line() for r in results])


def migrate(pg_url: str) -> StepReport:
    report = apply_migrations(pg_url)
    return StepReport("migrations", report.changed, [report.summary()])


def create_topics(admin: AdminClient, replication_factor: int) -> StepReport:
    return _from_results("topics", ensure_topics(admin, all_topics(), replication_factor=replication_factor))


def put_index_templates(es: Elasticsearch) -> StepReport:
    return _from_results("index_templates", ensure_index_templates(es, all_indices()))


def summarize(reports: list[dict[str, Any]]) -> str:
    """One line for the end of a bootstrap run: what changed, or that nothing did."""
    changed = [r["step"] for r in reports if r["changed"]]
    return "bootstrap: nothing changed" if not changed else f"bootstrap: changed {', '.join(changed)}"
