"""The embedded broker's version: pinned once, equal to production's image, found in the cache."""

from __future__ import annotations

import re
from pathlib import Path

from tributary.settings import REPO_ROOT
from tributary.stack.kafka_install import COMPLETE_MARKER, KafkaDistribution, pinned_kafka_version


def test_the_embedded_broker_runs_the_version_production_runs() -> None:
    compose = (REPO_ROOT / "docker" / "docker-compose.yml").read_text()
    tag = re.search(r"image: apache/kafka:\$\{KAFKA_IMAGE_TAG:-([^}]+)\}", compose)
    assert tag is not None, "docker-compose.yml no longer names apache/kafka with a KAFKA_IMAGE_TAG default"
    assert pinned_kafka_version() == tag.group(1)


def test_a_copy_without_its_marker_is_not_installed(tmp_path: Path) -> None:
    dist = KafkaDistribution("4.2.0", tmp_path / "kafka" / "4.2.0")
    dist.libs.mkdir(parents=True)
    (dist.libs / "kafka_2.13-4.2.0.jar").write_bytes(b"")
    assert not dist.installed  # cut short: fetched again
    (dist.libs / COMPLETE_MARKER).write_text("4.2.0\n")
    assert dist.installed
    assert dist.classpath == f"{dist.libs}/*"


def test_install_does_nothing_when_the_copy_is_complete(tmp_path: Path) -> None:
    dist = KafkaDistribution("4.2.0", tmp_path)
    dist.libs.mkdir(parents=True)
    (dist.libs / "kafka_2.13-4.2.0.jar").write_bytes(b"")
    (dist.libs / COMPLETE_MARKER).write_text("4.2.0\n")
    assert dist.install() is False
