"""Pure offset logic of the Kafka source: no Spark, no broker, so every rule is unit-testable.

Offsets are what Spark keeps in the checkpoint: plain JSON `{"topic": {"0": 123, "1": 456}}`
(topic -> partition as a string -> next offset to read), the same shape as Spark's native Kafka
source. Inside the source they are `{(topic, partition): offset}` dicts; `to_json_offsets` and
`from_json_offsets` convert between the two.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

PartitionKey = tuple[str, int]
JsonOffsets = dict[str, dict[str, int]]

# The sentinels of Spark's native source in a startingOffsets JSON.
EARLIEST = -2
LATEST = -1

StartingOffsets = Literal["earliest", "latest"] | dict[PartitionKey, int]


class DataLossError(RuntimeError):
    """Records the query should have read are gone (retention, topic recreated, log truncated)."""


def to_json_offsets(offsets: Mapping[PartitionKey, int]) -> JsonOffsets:
    """`{(topic, partition): offset}` -> checkpoint JSON, topics and partitions in sorted order.

    The order matters: Spark compares a Python source's offsets as JSON *strings* to decide
    whether a micro-batch has new data, so equal offsets must always serialise the same way.
    """
    result: JsonOffsets = {}
    for topic, partition in sorted(offsets):
        result.setdefault(topic, {})[str(partition)] = int(offsets[(topic, partition)])
    return result


def from_json_offsets(offsets: Mapping[str, Mapping[str, int]]) -> dict[PartitionKey, int]:
    """Checkpoint JSON -> `{(topic, partition): offset}`; refuses anything else with the reason."""
    if not isinstance(offsets, Mapping):
        raise ValueError(f"Kafka offsets must be a JSON object of topics, got {offsets!r}")
    result: dict[PartitionKey, int] = {}
    for topic, partitions in offsets.items():
        if not isinstance(partitions, Mapping):
            raise ValueError(f"Kafka offsets of topic {topic!r} must be an object of partitions, got {partitions!r}")
        for partition, offset in partitions.items():
            try:
                key = (str(topic), int(partition))
            except ValueError:
                raise ValueError(
                    f"Kafka offsets of topic {topic!r}: partition {partition!r} is not an integer"
                ) from None
            if isinstance(offset, bool) or not isinstance(offset, int):
                raise ValueError(f"Kafka offset of {topic}-{partition} must be an integer, got {offset!r}")
            result[key] = offset
    return result


def parse_starting_offsets(value: str, topics: Iterable[str]) -> StartingOffsets:
    """Parse the `startingOffsets` option: `earliest`, `latest` or JSON as Spark's native source.

    JSON is `{"topic": {"0": 23, "1": -2}}` where -2 means earliest and -1 latest. Every topic in
    it must be one of the subscribed `topics`.
    """
    text = value.strip()
    if text.lower() in {"earliest", "latest"}:
        return "earliest" if text.lower() == "earliest" else "latest"
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"startingOffsets={value!r} is neither 'earliest', 'latest' nor JSON ({exc.msg}); "
            'use e.g. {"topic": {"0": 23, "1": -2}} (-2 earliest, -1 latest)'
        ) from None
    offsets = from_json_offsets(raw)
    subscribed = set(topics)
    unknown = sorted({topic for topic, _ in offsets} - subscribed)
    if unknown:
        raise ValueError(
            f"startingOffsets names topics that are not subscribed: {', '.join(unknown)}; "
            f"subscribe lists {', '.join(sorted(subscribed))}"
        )
    for (topic, partition), offset in offsets.items():
        if offset < EARLIEST:
            raise ValueError(
                f"startingOffsets for {topic}-{partition} is {offset}: use an offset >= 0, -2 (earliest) or -1 (latest)"
            )
    return offsets


def resolve_starting_offsets(
    spec: StartingOffsets,
    lows: Mapping[PartitionKey, int],
    ends: Mapping[PartitionKey, int],
) -> dict[PartitionKey, int]:
    """Concrete start offsets of every existing partition (`lows`/`ends` hold them all).

    As Spark's native source, a JSON spec must name every partition of the topics it mentions;
    topics it does not mention start at earliest, like topics created after the query started.
    """
    if spec == "earliest":
        return dict(lows)
    if spec == "latest":
        return {key: ends[key] for key in lows}
    named_topics = {topic for topic, _ in spec}
    missing = sorted(key for key in lows if key[0] in named_topics and key not in spec)
    if missing:
        raise ValueError(
            "startingOffsets must give an offset for every partition of the topics it names; missing: "
            + ", ".join(f"{topic}-{partition}" for topic, partition in missing)
            + " (use -2 for earliest or -1 for latest)"
        )
    absent = sorted(key for key in spec if key not in lows)
    if absent:
        raise ValueError(
            "startingOffsets names partitions that do not exist: "
            + ", ".join(f"{topic}-{partition}" for topic, partition in absent)
        )
    result: dict[PartitionKey, int] = {}
    for key, low in lows.items():
        wanted = spec.get(key, EARLIEST)
        if wanted == EARLIEST:
            result[key] = low
        elif wanted == LATEST:
            result[key] = ends[key]
        else:
            # An explicit offset outside the log is checked like a checkpointed one, by
            # `resolve_start` (failOnDataLoss decides), so it is kept as given here.
            result[key] = wanted
    return result


@dataclass(frozen=True)
class LostRange:
    """Records `[start, end)` of one partition that the query should have read and never will.

    `end` is None when it is unknown: the log was replaced (topic recreated, log truncated,
    partition gone) and whatever the old log held from `start` on is gone. `reason` says why,
    naming the partition and the range.
    """

    topic: str
    partition: int
    start: int
    end: int | None
    reason: str

    @property
    def size(self) -> int | None:
        return None if self.end is None else self.end - self.start


@dataclass(frozen=True)
class StartDecision:
    """Where reading a partition really starts, and what was lost getting there."""

    offset: int
    lost: bool = False
    skipped: int | None = 0  # records skipped; None when unknown (the log was replaced)
    reason: str = ""
    lost_range: LostRange | None = None


def resolve_start(
    key: PartitionKey, start: int, low: int, end: int | None, *, fail_on_data_loss: bool
) -> StartDecision:
    """Decide where to read `key` from, given the stored `start` and the log's `[low, end)`.

    - `start < low`: retention deleted `[start, low)` before it was read.
    - `start > end` (`end` known exactly): the offsets went backwards, i.e. the topic was
      recreated or the log truncated; the new log is read from `low`.
    With `fail_on_data_loss` either case raises `DataLossError` naming the partition, the
    missing range and the option to change; otherwise the decision says what was skipped.
    """
    topic, partition = key
    if start < low:
        reason = (
            f"{topic}-{partition}: records [{start}, {low}) were deleted (retention) before they were read "
            f"({low - start} records)"
        )
        decision = StartDecision(
            offset=low,
            lost=True,
            skipped=low - start,
            reason=reason,
            lost_range=LostRange(topic, partition, start, low, reason),
        )
    elif end is not None and start > end:
        reason = (
            f"{topic}-{partition}: offset {start} is beyond the end of the log ({end}): the topic was recreated "
            f"or the log truncated; records the old log held from {start} on are gone, the new log is read "
            f"from {low}"
        )
        decision = StartDecision(
            offset=low,
            lost=True,
            skipped=None,
            reason=reason,
            lost_range=LostRange(topic, partition, start, None, reason),
        )
    else:
        return StartDecision(offset=start)
    if fail_on_data_loss:
        raise data_loss_error(decision.reason)
    return decision


def data_loss_error(reason: str) -> DataLossError:
    """The error for lost records: what was lost, and the two ways forward."""
    return DataLossError(
        f"Kafka data loss: {reason}. Set the option failOnDataLoss=false to skip the lost records "
        "and continue, or restart the query with a new checkpoint."
    )


def range_end_loss(key: PartitionKey, range_end: int, log_end: int) -> LostRange | None:
    """Records of a planned range `[..., range_end)` lost because the log now ends at `log_end`, if any.

    Offsets `[log_end, range_end)` are gone for good: new records written at them after a
    truncation are behind the checkpoint, which moves on to `range_end`.
    """
    if log_end >= range_end:
        return None
    topic, partition = key
    reason = (
        f"{topic}-{partition}: the log ends at {log_end} but the batch planned records up to {range_end}: "
        f"records [{log_end}, {range_end}) are gone (topic recreated or log truncated while the batch ran; "
        f"{range_end - log_end} records)"
    )
    return LostRange(topic, partition, log_end, range_end, reason)


def check_range_end(key: PartitionKey, range_end: int, log_end: int, *, fail_on_data_loss: bool) -> int:
    """Records of a planned range `[..., range_end)` lost because the log now ends at `log_end`.

    Raises `DataLossError` when any are lost and `fail_on_data_loss`; returns the count otherwise.
    """
    lost = range_end_loss(key, range_end, log_end)
    if lost is None:
        return 0
    if fail_on_data_loss:
        raise data_loss_error(lost.reason)
    return range_end - log_end


def vanished_partition_loss(key: PartitionKey, start: int) -> LostRange:
    """A partition the query was reading that no longer exists: everything from `start` on is gone."""
    topic, partition = key
    return LostRange(
        topic,
        partition,
        start,
        None,
        f"{topic}-{partition}: the partition no longer exists (topic deleted?); records from offset {start} on "
        "are gone",
    )


def distribute_budget(available: Mapping[PartitionKey, int], budget: int) -> dict[PartitionKey, int]:
    """Split `budget` records across partitions in proportion to what each has available.

    Deterministic and exact: each partition gets floor(budget * available / total), then the
    records left over go one each to the largest fractional parts (ties: topic, partition order).
    The result sums to min(budget, total) and never exceeds a partition's availability.
    Proportional shares, as Spark's native `maxOffsetsPerTrigger`, let every partition's backlog
    drain at the same pace, so the native and this source cut batches alike.
    """
    if budget < 0:
        raise ValueError(f"the read budget must be >= 0, got {budget}")
    wanted = {key: count for key, count in available.items() if count > 0}
    total = sum(wanted.values())
    if total <= budget:
        return {key: max(count, 0) for key, count in available.items()}
    shares: dict[PartitionKey, int] = {}
    remainders: list[tuple[int, PartitionKey]] = []
    for key in sorted(wanted):
        whole, remainder = divmod(budget * wanted[key], total)
        shares[key] = whole
        remainders.append((remainder, key))
    left = budget - sum(shares.values())
    # Largest remainder first; equal remainders in key order. `left` < number of partitions.
    for _, key in sorted(remainders, key=lambda item: (-item[0], item[1]))[:left]:
        shares[key] += 1
    return {key: shares.get(key, 0) for key in available}


@dataclass(frozen=True)
class OffsetRange:
    """Records `[start, end)` of one Kafka partition."""

    topic: str
    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return max(self.end - self.start, 0)


def split_range(offset_range: OffsetRange, max_records: int) -> list[OffsetRange]:
    """`offset_range` cut into the fewest chunks of at most `max_records`, sizes within 1 of each other.

    A pure function of its arguments, so a replayed batch is split exactly as the first time
    (sinks that keep a ledger of written ranges rely on that).
    """
    if max_records < 1:
        raise ValueError(f"maxRecordsPerPartition must be >= 1, got {max_records}")
    size = offset_range.size
    if size == 0:
        return []
    chunks = -(-size // max_records)
    base, extra = divmod(size, chunks)
    result = []
    start = offset_range.start
    for index in range(chunks):
        end = start + base + (1 if index < extra else 0)
        result.append(OffsetRange(offset_range.topic, offset_range.partition, start, end))
        start = end
    return result


def plan_ranges(
    starts: Mapping[PartitionKey, int], ends: Mapping[PartitionKey, int], max_records: int
) -> list[OffsetRange]:
    """Ranges to read for a micro-batch, in (topic, partition, start) order, split by `max_records`."""
    ranges: list[OffsetRange] = []
    for key in sorted(ends):
        start = starts[key]
        if ends[key] > start:
            ranges.extend(split_range(OffsetRange(key[0], key[1], start, ends[key]), max_records))
    return ranges
