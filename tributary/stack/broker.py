"""The Kafka broker: Apache Kafka in single-node KRaft mode (embedded), or an external Kafka.

The embedded broker runs from the jars `make setup` fetched (see `kafka_install`), with its
configuration, cluster id and log directories under `<state_dir>/kafka`, so topics, records and
committed offsets survive `down` / `up`. Both of its listeners bind to loopback only.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path

from tributary.settings import Endpoint, Settings
from tributary.stack.component import ComponentStatus, ProcessComponent, State, print_progress
from tributary.stack.errors import BinaryMissingError, StackError
from tributary.stack.health import Progress, kafka_probe
from tributary.stack.kafka_install import KafkaDistribution
from tributary.stack.processes import tail

_HEAP = re.compile(r"^[1-9][0-9]*[kKmMgG]?$")
NODE_ID = 1

# Broker settings of the embedded single node: replication factors of 1 for internal topics, no
# waiting for more members, topics only through provisioning (as production: see docker/), and
# thread counts for a 2-core machine.
EMBEDDED_BROKER_CONFIG: Mapping[str, str] = {
    "process.roles": "broker,controller",
    "node.id": str(NODE_ID),
    "controller.listener.names": "CONTROLLER",
    "inter.broker.listener.name": "PLAINTEXT",
    "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
    "auto.create.topics.enable": "false",
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    "num.network.threads": "2",
    "num.io.threads": "4",
    "num.recovery.threads.per.data.dir": "1",
    "background.threads": "4",
}

LOG4J2_CONFIG = """\
# The embedded broker logs to stdout, which `tributary up` sends to <state_dir>/logs/kafka.log.
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
# Per-request and config dumps drown the lines that explain a failure.
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
"""


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (as kafka-storage random-uuid)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


class KafkaBroker(ProcessComponent):
    """Apache Kafka (KRaft, broker and controller in one JVM) on `settings.kafka_endpoint`.

    `broker_config` overrides or adds server properties (tests use it for fast retention checks).
    """

    name = "kafka"
    health_timeout = 120.0  # a JVM on a busy 2-core machine
    stop_timeout = 60.0  # a controlled shutdown flushes and closes every log

    def __init__(
        self,
        settings: Settings,
        progress: Progress | None = print_progress,
        *,
        broker_config: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(settings, progress)
        self.broker_config = dict(broker_config or {})
        self.distribution = KafkaDistribution.for_settings(settings)

    # -- layout -------------------------------------------------------------------------------

    @property
    def home(self) -> Path:
        return self.settings.state_dir / "kafka"

    @property
    def data_dir(self) -> Path:
        """The broker's log directory (`log.dirs`): topics, offsets and KRaft metadata."""
        return self.home / "data"

    @property
    def cluster_id_file(self) -> Path:
        return self.home / "cluster.id"

    @property
    def config_file(self) -> Path:
        return self.home / "server.properties"

    @property
    def log4j_file(self) -> Path:
        return self.home / "log4j2.properties"

    # -- component ----------------------------------------------------------------------------

    @property
    def embedded(self) -> bool:
        return self.settings.embedded_kafka

    @property
    def listen(self) -> Endpoint:
        endpoint = self.settings.kafka_endpoint
        if self.embedded and not endpoint.is_loopback:
            # No authentication on the embedded listeners: beyond loopback they would expose the broker.
            raise StackError(
                f"kafka: the embedded broker only listens on loopback, not {endpoint.host}; "
                f"set {endpoint.setting} to 127.0.0.1:{endpoint.port}, or set "
                "TRIBUTARY_EMBEDDED_KAFKA=0 to use an external Kafka"
            )
        return endpoint

    @property
    def listens(self) -> list[Endpoint]:
        controller = self.settings.kafka_controller_endpoint
        if controller.port == self.listen.port:
            raise StackError(
                f"kafka: TRIBUTARY_KAFKA_CONTROLLER_PORT={controller.port} is the broker's own port "
                f"({self.settings.kafka_bootstrap}); set it to another free port"
            )
        return [self.listen, controller]

    @property
    def endpoint_text(self) -> str:
        return self.settings.kafka_bootstrap

    def command(self) -> list[str]:
        heap = self.settings.kafka_heap.strip()
        if not _HEAP.match(heap):
            raise StackError(
                f"kafka: TRIBUTARY_KAFKA_HEAP={self.settings.kafka_heap!r} is not a JVM heap size; "
                "use a number with k, m or g, e.g. 1g"
            )
        classpath = self.distribution.classpath
        self._write_config()
        self._format_storage(classpath)
        return [
            java_binary(),
            "-Xms256m",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log4j_file}",
            "-cp",
            classpath,
            "kafka.Kafka",
            str(self.config_file),
        ]

    def probe(self) -> None:
        kafka_probe(self.settings.kafka_bootstrap)

    def external_hint(self) -> str:
        return "Check TRIBUTARY_KAFKA_BOOTSTRAP, or set TRIBUTARY_EMBEDDED_KAFKA=1 to run the embedded broker"

    def status(self) -> ComponentStatus:
        result = super().status()
        if self.embedded and result.state == State.RUNNING:
            detail = f"Apache Kafka {self.distribution.version}, log dir {self.data_dir}"
            return ComponentStatus(result.name, result.state, result.pid, result.endpoint, result.log, detail)
        return result

    # -- configuration and storage ------------------------------------------------------------

    def server_properties(self) -> dict[str, str]:
        """The broker's server.properties for the current settings."""
        broker, controller = self.listens
        host = "127.0.0.1" if broker.host == "localhost" else broker.host
        return {
            **EMBEDDED_BROKER_CONFIG,
            "listeners": f"PLAINTEXT://{host}:{broker.port},CONTROLLER://{host}:{controller.port}",
            "advertised.listeners": f"PLAINTEXT://{host}:{broker.port}",
            "controller.quorum.voters": f"{NODE_ID}@{host}:{controller.port}",
            "log.dirs": str(self.data_dir),
            **self.broker_config,
        }

    def _write_config(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        lines = [f"{key}={value}" for key, value in self.server_properties().items()]
        self.config_file.write_text(
            "# Written by `tributary up` from the settings at every start; edits here are lost.\n"
            + "\n".join(lines)
            + "\n"
        )
        self.log4j_file.write_text(LOG4J2_CONFIG)

    def _format_storage(self, classpath: str) -> None:
        """Format the log directory once, with the cluster id kept in `cluster.id`."""
        if (self.data_dir / "meta.properties").exists():
            return
        if not self.cluster_id_file.exists():
            self.cluster_id_file.write_text(new_cluster_id() + "\n")
        cluster_id = self.cluster_id_file.read_text().strip()
        if self.progress:
            self.progress(f"kafka: formatting {self.data_dir} (cluster id {cluster_id})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            java_binary(),
            f"-Dlog4j2.configurationFile={self.log4j_file}",
            "-cp",
            classpath,
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            cluster_id,
            "--config",
            str(self.config_file),
        ]
        with self.log_path.open("ab") as log:
            result = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, check=False)
        if result.returncode != 0:
            raise StackError(
                f"kafka: formatting the log directory {self.data_dir} failed (exit {result.returncode}); "
                f"last lines of {self.log_path}:\n{tail(self.log_path)}"
            )


def java_binary() -> str:
    """The `java` the broker runs on: JAVA_HOME's, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise BinaryMissingError("kafka: no `java` on PATH: install Java 17 (`make setup` does), or set JAVA_HOME")
    return found
