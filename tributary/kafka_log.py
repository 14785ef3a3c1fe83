"""Where Kafka partitions' logs start and end: the one reader the source, the supervisor and
reconciliation share, so lag, reconciliation and the streaming source agree on a log's bounds.

A log's bounds are `[start, end)`: `start` is the first offset retention kept, `end` the next
offset to be read. Under `read_committed` (the platform's isolation level) the broker answers the
end with the last stable offset, so records of a transaction still open are not counted as
readable yet; under `read_uncommitted` it is the high watermark. The reader never joins a group
and never commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

PartitionKey = tuple[str, int]
IsolationLevel = Literal["read_committed", "read_uncommitted"]

# The platform reads what producers committed: aborted transactions never reach a sink.
PLATFORM_ISOLATION: IsolationLevel = "read_committed"
METADATA_TIMEOUT_S = 30.0
# librdkafka wants a group.id on every consumer, even one that is only assigned partitions.
READER_GROUP_ID = "tributary-log-reader"


class MissingTopicError(RuntimeError):
    """The topic is not on the broker."""


@dataclass(frozen=True)
class LogBounds:
    """The readable offsets `[start, end)` of one partition."""

    start: int
    end: int

    @property
    def size(self) -> int:
        return max(0, self.end - self.start)


class KafkaLog:
    """Partitions of topics and the bounds of their logs, read through one consumer.

    `config` is a librdkafka configuration (bootstrap servers, security settings); `isolation`
    decides what counts as the end of a log (see the module docstring).
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        client_id: str,
        isolation: IsolationLevel = PLATFORM_ISOLATION,
        timeout_s: float = METADATA_TIMEOUT_S,
    ) -> None:
        self._config: dict[str, Any] = {
            "group.id": READER_GROUP_ID,
            **config,
            "client.id": client_id,
            "isolation.level": isolation,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
        }
        self.bootstrap = str(self._config.get("bootstrap.servers", "?"))
        self.timeout_s = timeout_s
        self._consumer: Consumer | None = None

    @property
    def consumer(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer(self._config)
        return self._consumer

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def __enter__(self) -> KafkaLog:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def partitions(self, topic: str, *, missing_ok: bool = False) -> list[int]:
        """Partition numbers of `topic`, sorted; [] for a missing topic when `missing_ok`."""
        try:
            metadata = self.consumer.list_topics(topic, timeout=self.timeout_s).topics.get(topic)
        except KafkaException as exc:
            raise RuntimeError(
                f"cannot read the metadata of topic {topic!r} from {self.bootstrap}: {exc}; "
                "check the bootstrap servers (TRIBUTARY_KAFKA_BOOTSTRAP) and that the broker is up"
            ) from exc
        error = None if metadata is None else metadata.error
        if metadata is None or (error is not None and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
            if missing_ok:
                return []
            raise MissingTopicError(
                f"topic {topic} is not on the broker {self.bootstrap}; run the tributary_bootstrap DAG"
            )
        if error is not None:
            raise RuntimeError(f"cannot read the metadata of topic {topic!r} from {self.bootstrap}: {error}")
        return sorted(metadata.partitions)

    def bounds(self, keys: Iterable[PartitionKey]) -> dict[PartitionKey, LogBounds]:
        """`[start, end)` of each partition in `keys`."""
        return {key: log_bounds(self.consumer, key, self.timeout_s, self.bootstrap) for key in keys}

    def topic_bounds(self, topic: str, *, missing_ok: bool = False) -> dict[int, LogBounds]:
        """`{partition: bounds}` of every partition of `topic`."""
        keys = [(topic, partition) for partition in self.partitions(topic, missing_ok=missing_ok)]
        return {partition: bounds for (_, partition), bounds in self.bounds(keys).items()}


def log_bounds(consumer: Consumer, key: PartitionKey, timeout_s: float, bootstrap: str = "?") -> LogBounds:
    """`[start, end)` of one partition through `consumer` (its isolation level decides the end)."""
    topic, partition = key
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
    except KafkaException as exc:
        raise RuntimeError(
            f"cannot read the offsets of {topic}-{partition} from {bootstrap}: {exc}; "
            "check that the broker is up and the topic exists"
        ) from exc
    return LogBounds(int(low), int(high))
