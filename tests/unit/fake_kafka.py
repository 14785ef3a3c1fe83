"""A stand-in for the Kafka source's broker view, for planning tests without a broker."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from spark_jobs.sources.kafka_offsets import PartitionKey
from tributary.kafka_log import LogBounds


class FakeLogView:
    """Partitions with `[low, end)` logs, as `KafkaLogView` reports them."""

    def __init__(self, logs: Mapping[PartitionKey, tuple[int, int]]) -> None:
        self.logs = dict(logs)

    def partitions(self) -> list[PartitionKey]:
        return sorted(self.logs)

    def bounds(self, keys: Sequence[PartitionKey]) -> dict[PartitionKey, LogBounds]:
        return {key: LogBounds(*self.logs[key]) for key in keys}

    def close(self) -> None:
        pass
