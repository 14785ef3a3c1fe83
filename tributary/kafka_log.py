"""Where Kafka partitions' logs start and end: the one reader the source, the supervisor and
reconciliation share, so lag, reconciliation and the streaming source agree on a log's bounds.

A log's bounds are `[start, end)`: `start` is the first offset retention kept, `end` the next
offset to be read. Under `read_committed` (the platform's isolation level) the broker answers the
end with the last stable offset, so records of a transaction still open are not counted as
readable yet; under `read_uncommitted` it is the high watermark. The reader never joins a group
and never commits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

log = logging.getLogger(__name__)

PartitionKey = tuple[str, int]
IsolationLevel = Literal["read_committed", "read_uncommitted"]

# The platform reads what producers committed: aborted transactions never reach a sink.
PLATFORM_ISOLATION: IsolationLevel = "read_committed"
METADATA_TIMEOUT_S = 30.0
# librdkafka wants a group.id on every consumer, even one that is only assigned partitions.
READER_GROUP_ID = "tributary-log-reader"
RETRY_PAUSE_S = 0.5
# What a broker answers while it starts, moves leaders or is briefly unreachable: asking again
# within the reader's timeout gets the real answer.
_TRANSIENT_CODES = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.REPLICA_NOT_AVAILABLE,
        KafkaError.BROKER_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._WAIT_COORD,
        # Right after a broker restart, before the client's metadata has the partition again. A
        # partition that is really gone is found by `partitions()` (metadata), not here.
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
    }
)


def is_transient(error: KafkaError) -> bool:
    """True for errors a later request can get past (leadership changes, a restarting broker)."""
    return error.code() in _TRANSIENT_CODES or (error.retriable() and not error.fatal())


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

        def read() -> Any:
            found = self.consumer.list_topics(topic, timeout=self.timeout_s).topics.get(topic)
            error = None if found is None else found.error
            # A topic the metadata does not know is missing, not transient (see below).
            if error is not None and error.code() != KafkaError.UNKNOWN_TOPIC_OR_PART and is_transient(error):
                raise KafkaException(error)
            return found

        try:
            metadata = retry_transient(read, self.timeout_s, f"metadata of {topic}")
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
        low, high = retry_transient(
            lambda: consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s),
            timeout_s,
            f"offsets of {topic}-{partition}",
        )
    except KafkaException as exc:
        raise RuntimeError(
            f"cannot read the offsets of {topic}-{partition} from {bootstrap}: {exc}; "
            "check that the broker is up and the topic exists"
        ) from exc
    return LogBounds(int(low), int(high))


def retry_transient(call: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """`call()`, asked again while it fails with a transient Kafka error, for up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except KafkaException as exc:
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if error is None or not is_transient(error) or time.monotonic() + RETRY_PAUSE_S > deadline:
                raise
            log.warning("reading the %s: %s; asking again", what, error)
            time.sleep(RETRY_PAUSE_S)
