"""The embedded Kafka broker's jars: which version, where they live, and fetching them with Maven.

`deploy/kafka-broker/pom.xml` pins the version; `make setup` runs `main()`, which copies the broker and its dependencies from Maven Central into
`<cache_dir>/kafka/<version>/libs` once (a marker file records a complete copy).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from tributary.settings import REPO_ROOT, Settings, load_settings
from tributary.stack.errors import BinaryMissingError, StackError

POM_PATH = REPO_ROOT / "deploy" / "kafka-broker" / "pom.xml"
_POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}
# Written last, so a copy cut short by Ctrl-C or a network error is fetched again.
COMPLETE_MARKER = ".complete"


def pinned_kafka_version(pom: Path = POM_PATH) -> str:
    """The `kafka.version` property of the broker's pom."""
    node = ET.parse(pom).getroot().find("m:properties/m:kafka.version", _POM_NS)
    if node is None or not (node.text or "").strip():
        raise StackError(f"{pom} has no <properties><kafka.version>: put the broker version there")
    return (node.text or "").strip()


@dataclass(frozen=True)
class KafkaDistribution:
    """The broker's jars for one version under the cache directory."""

    version: str
    root: Path

    @classmethod
    def for_settings(cls, settings: Settings) -> KafkaDistribution:
        version = pinned_kafka_version()
        return cls(version, settings.cache_dir / "kafka" / version)

    @property
    def libs(self) -> Path:
        return self.root / "libs"

    @property
    def installed(self) -> bool:
        return (self.libs / COMPLETE_MARKER).exists() and any(self.libs.glob("kafka_2.13-*.jar"))

    @property
    def classpath(self) -> str:
        """The JVM classpath (a wildcard over the libs directory)."""
        if not self.installed:
            raise BinaryMissingError(
                f"kafka: Apache Kafka {self.version} is not installed in {self.libs}: run `make setup` "
                "(it fetches the broker from Maven Central), or set TRIBUTARY_EMBEDDED_KAFKA=0 and point "
                "TRIBUTARY_KAFKA_BOOTSTRAP at a running Kafka"
            )
        return str(self.libs / "*")

    def install(self, *, out: TextIO | None = None) -> bool:
        """Fetch the jars with Maven unless a complete copy is there; True when it fetched."""
        if self.installed:
            return False
        out = out or sys.stdout
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BinaryMissingError(
                "kafka: Maven (`mvn`) is needed once to fetch the broker: `apt-get install maven`, or "
                f"copy the jars of org.apache.kafka:kafka_2.13:{self.version} into {self.libs}"
            )
        staging = self.root / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        print(f"setup: fetching Apache Kafka {self.version} with Maven into {self.libs} ...", file=out, flush=True)
        argv = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(POM_PATH),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(
                f"kafka: `{' '.join(argv)}` failed (exit {result.returncode}):\n"
                f"{(result.stdout + result.stderr).strip()[-3000:]}\n"
                "check that Maven Central is reachable (or ~/.m2/settings.xml's mirror)"
            )
        (staging / COMPLETE_MARKER).write_text(self.version + "\n")
        shutil.rmtree(self.libs, ignore_errors=True)
        staging.rename(self.libs)
        jars = len(list(self.libs.glob("*.jar")))
        print(f"setup: Apache Kafka {self.version}: {jars} jars in {self.libs}", file=out, flush=True)
        return True


def main() -> int:
    """`make setup`'s step: fetch the broker if it is missing."""
    settings = load_settings()
    if not settings.embedded_kafka:
        print("setup: TRIBUTARY_EMBEDDED_KAFKA=0, so no broker is fetched")
        return 0
    try:
        KafkaDistribution.for_settings(settings).install()
    except StackError as exc:
        print(f"setup: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
