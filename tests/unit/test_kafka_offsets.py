"""Offset logic of the Kafka source, without Spark or a broker.

Covers the pure rules (startingOffsets, data loss, budget, range splitting), the option parsing,
and the stream reader's planning against a fake broker view.
"""

from __future__ import annotations

import datetime as dt
import json
import pickle

import pytest
from confluent_kafka import Message
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.streaming.datasource import ReadAllAvailable, ReadMaxRows, ReadMinRows

from spark_jobs.sources.kafka import (
    ARROW_SCHEMA,
    KAFKA_SCHEMA,
    KafkaDataSource,
    KafkaInputPartition,
    KafkaSourceOptions,
    KafkaStreamReader,
    _record_batch,
    pipeline_source_options,
)
from spark_jobs.sources.kafka_offsets import (
    DataLossError,
    OffsetRange,
    check_range_end,
    distribute_budget,
    from_json_offsets,
    parse_starting_offsets,
    plan_ranges,
    resolve_start,
    resolve_starting_offsets,
    split_range,
    to_json_offsets,
)
from tests.unit.fake_kafka import FakeLogView
from tributary.catalog import USER_EVENTS
from tributary.settings import load_settings

A0, A1, B0 = ("a", 0), ("a", 1), ("b", 0)


# --- checkpoint JSON --------------------------------------------------------------------------


def test_json_offsets_round_trip_in_canonical_order() -> None:
    offsets = {("b", 0): 5, ("a", 10): 7, ("a", 2): 3}
    encoded = to_json_offsets(offsets)
    # Spark compares offsets as JSON strings: the order must not depend on insertion order.
    assert json.dumps(encoded) == '{"a": {"2": 3, "10": 7}, "b": {"0": 5}}'
    assert from_json_offsets(encoded) == offsets


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (["a"], "JSON object of topics"),
        ({"a": 3}, "object of partitions"),
        ({"a": {"x": 1}}, "not an integer"),
        ({"a": {"0": "1"}}, "must be an integer"),
        ({"a": {"0": True}}, "must be an integer"),
    ],
)
def test_json_offsets_refuse_bad_shapes(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_json_offsets(value)  # type: ignore[arg-type]


# --- startingOffsets --------------------------------------------------------------------------


def test_starting_offsets_keywords() -> None:
    assert parse_starting_offsets("earliest", ["a"]) == "earliest"
    assert parse_starting_offsets(" LATEST ", ["a"]) == "latest"


def test_starting_offsets_json() -> None:
    assert parse_starting_offsets('{"a": {"0": 23, "1": -2}}', ["a", "b"]) == {A0: 23, A1: -2}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("oldest", "neither 'earliest', 'latest' nor JSON"),
        ('{"c": {"0": 1}}', "not subscribed: c"),
        ('{"a": {"0": -3}}', "a-0 is -3"),
    ],
)
def test_starting_offsets_refused(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_starting_offsets(value, ["a", "b"])


def test_resolve_starting_offsets() -> None:
    lows = {A0: 5, A1: 0, B0: 2}
    ends = {A0: 50, A1: 40, B0: 30}
    assert resolve_starting_offsets("earliest", lows, ends) == lows
    assert resolve_starting_offsets("latest", lows, ends) == ends
    # -2 earliest, -1 latest, explicit kept; topic b not named: earliest (as a later topic).
    assert resolve_starting_offsets({A0: -2, A1: -1}, lows, ends) == {A0: 5, A1: 40, B0: 2}
    assert resolve_starting_offsets({A0: 7, A1: 9}, lows, ends) == {A0: 7, A1: 9, B0: 2}


def test_resolve_starting_offsets_needs_every_partition_of_a_named_topic() -> None:
    with pytest.raises(ValueError, match="missing: a-1"):
        resolve_starting_offsets({A0: 3}, {A0: 0, A1: 0}, {A0: 9, A1: 9})
    with pytest.raises(ValueError, match="do not exist: a-7"):
        resolve_starting_offsets({A0: 3, ("a", 7): 1}, {A0: 0}, {A0: 9})


# --- data loss --------------------------------------------------------------------------------


def test_no_data_loss_keeps_the_start() -> None:
    assert resolve_start(A0, 10, 5, 20, fail_on_data_loss=True).offset == 10
    assert resolve_start(A0, 20, 5, 20, fail_on_data_loss=True).offset == 20  # at the end: nothing new


def test_retention_loss_fails_naming_partition_range_and_option() -> None:
    with pytest.raises(DataLossError) as info:
        resolve_start(A0, 10, 25, 40, fail_on_data_loss=True)
    text = str(info.value)
    assert "a-0" in text and "[10, 25)" in text and "failOnDataLoss=false" in text


def test_retention_loss_skips_to_low_watermark_and_counts() -> None:
    decision = resolve_start(A0, 10, 25, 40, fail_on_data_loss=False)
    assert (decision.offset, decision.lost, decision.skipped) == (25, True, 15)


def test_offset_beyond_log_end_is_data_loss() -> None:
    with pytest.raises(DataLossError, match="beyond the end of the log"):
        resolve_start(A0, 100, 0, 30, fail_on_data_loss=True)
    decision = resolve_start(A0, 100, 0, 30, fail_on_data_loss=False)
    assert (decision.offset, decision.lost, decision.skipped) == (0, True, None)


def test_unknown_log_end_proves_no_loss() -> None:
    # A lower-bound end (probe gave up) below the start is not evidence of truncation.
    assert not resolve_start(A0, 100, 0, None, fail_on_data_loss=True).lost


def test_range_beyond_log_end_while_reading() -> None:
    assert check_range_end(A0, 50, 50, fail_on_data_loss=True) == 0
    assert check_range_end(A0, 50, 42, fail_on_data_loss=False) == 8
    with pytest.raises(DataLossError, match=r"a-0: the log ends at 42 .* up to 50"):
        check_range_end(A0, 50, 42, fail_on_data_loss=True)


# --- maxOffsetsPerTrigger budget --------------------------------------------------------------


def test_budget_larger_than_backlog_takes_everything() -> None:
    assert distribute_budget({A0: 3, A1: 0, B0: 4}, 100) == {A0: 3, A1: 0, B0: 4}


def test_budget_is_proportional_and_exact() -> None:
    shares = distribute_budget({A0: 600, A1: 300, B0: 100}, 100)
    assert shares == {A0: 60, A1: 30, B0: 10}


def test_budget_remainder_goes_to_largest_fractions_then_key_order() -> None:
    # 10 * 1/3 each = 3.33: one leftover record, equal remainders -> first key.
    assert distribute_budget({B0: 5, A1: 5, A0: 5}, 10) == {B0: 3, A1: 3, A0: 4}
    # 7 * (2/7, 5/7) -> 2, 5 exactly.
    assert distribute_budget({A0: 20, A1: 50}, 7) == {A0: 2, A1: 5}


@pytest.mark.parametrize("budget", [0, 1, 2, 7, 99, 1000, 4321])
def test_budget_never_exceeds_limit_or_availability(budget: int) -> None:
    available = {A0: 1, A1: 1234, B0: 77, ("c", 3): 0, ("c", 4): -5}
    shares = distribute_budget(available, budget)
    assert sum(shares.values()) == min(budget, sum(v for v in available.values() if v > 0))
    assert all(0 <= shares[key] <= max(available[key], 0) for key in available)
    assert shares == distribute_budget(dict(reversed(list(available.items()))), budget)  # order-free


def test_budget_refuses_negative() -> None:
    with pytest.raises(ValueError):
        distribute_budget({A0: 1}, -1)


# --- range splitting --------------------------------------------------------------------------


def test_split_range_balanced_contiguous_and_deterministic() -> None:
    chunks = split_range(OffsetRange("a", 0, 100, 350), 100)
    assert [(c.start, c.end) for c in chunks] == [(100, 184), (184, 267), (267, 350)]
    assert chunks == split_range(OffsetRange("a", 0, 100, 350), 100)


def test_split_range_small_and_empty() -> None:
    assert split_range(OffsetRange("a", 0, 5, 9), 100) == [OffsetRange("a", 0, 5, 9)]
    assert split_range(OffsetRange("a", 0, 9, 9), 100) == []
    with pytest.raises(ValueError, match="maxRecordsPerPartition"):
        split_range(OffsetRange("a", 0, 0, 9), 0)


def test_plan_ranges_orders_and_skips_empty() -> None:
    ranges = plan_ranges({B0: 0, A1: 5, A0: 3}, {B0: 4, A1: 5, A0: 6}, 2)
    assert [(r.topic, r.partition, r.start, r.end) for r in ranges] == [
        ("a", 0, 3, 5),
        ("a", 0, 5, 6),
        ("b", 0, 0, 2),
        ("b", 0, 2, 4),
    ]


# --- options ----------------------------------------------------------------------------------


def test_options_parse_case_insensitively_with_passthrough() -> None:
    options = KafkaSourceOptions.from_options(
        {
            "kafka.bootstrap.servers": "h:1",
            "Subscribe": "a, b",
            "STARTINGOFFSETS": "earliest",
            "maxOffsetsPerTrigger": "500",
            "failOnDataLoss": "False",
            "maxRecordsPerPartition": "10",
            "kafka.security.protocol": "SSL",
        }
    )
    assert options.topics == ("a", "b")
    assert options.starting_offsets == "earliest"
    assert options.max_offsets_per_trigger == 500
    assert options.fail_on_data_loss is False
    assert options.max_records_per_partition == 10
    config = options.consumer_config()
    assert config["bootstrap.servers"] == "h:1"
    assert config["security.protocol"] == "SSL"
    assert config["enable.auto.commit"] is False
    assert config["auto.offset.reset"] == "error"


def test_options_defaults() -> None:
    options = KafkaSourceOptions.from_options({"kafka.bootstrap.servers": "h:1", "subscribe": "a"})
    assert options.starting_offsets == "latest"
    assert options.max_offsets_per_trigger is None
    assert options.fail_on_data_loss is True
    assert options.isolation_level == "read_uncommitted"  # as the native source; pipelines ask for read_committed


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"subscribe": "a"}, "kafka.bootstrap.servers is required"),
        ({"kafka.bootstrap.servers": "h:1"}, "subscribe is required"),
        ({"kafka.bootstrap.servers": "h:1", "subscribe": "a", "assign": "x"}, "assign is not supported"),
        ({"kafka.bootstrap.servers": "h:1", "subscribe": "a", "startingOfsets": "x"}, "unknown option"),
        ({"kafka.bootstrap.servers": "h:1", "subscribe": "a", "kafka.auto.offset.reset": "x"}, "startingOffsets"),
        ({"kafka.bootstrap.servers": "h:1", "subscribe": "a", "maxOffsetsPerTrigger": "0"}, "positive integer"),
        ({"kafka.bootstrap.servers": "h:1", "subscribe": "a", "failOnDataLoss": "no"}, "true or false"),
    ],
)
def test_options_refused_with_reason(options: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KafkaSourceOptions.from_options(options)


# --- schema and Arrow batches -----------------------------------------------------------------


def test_arrow_schema_is_what_spark_expects_from_read() -> None:
    # Spark checks a yielded RecordBatch's schema against this conversion, nullability included.
    assert ARROW_SCHEMA.equals(to_arrow_schema(KAFKA_SCHEMA, timezone="UTC"))
    assert KAFKA_SCHEMA.fieldNames() == ["key", "value", "topic", "partition", "offset", "timestamp", "timestampType"]


def test_record_batch_matches_native_columns() -> None:
    messages = [
        Message(topic="t", partition=2, offset=7, key=b"k", value=b"v", timestamp=(1, 1_700_000_000_123)),
        Message(topic="t", partition=2, offset=8, key=None, value=None, timestamp=(0, -1)),
    ]
    batch = _record_batch(messages, "t", 2)
    assert batch.schema.equals(ARROW_SCHEMA)
    rows = batch.to_pylist()
    assert rows[0]["key"] == b"k" and rows[0]["offset"] == 7 and rows[0]["partition"] == 2
    assert rows[0]["timestamp"] == dt.datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=dt.UTC)
    assert [row["timestampType"] for row in rows] == [0, -1]  # CreateTime, none (Kafka's ids)
    assert rows[1]["key"] is None and rows[1]["value"] is None


def test_data_source_name_and_schema() -> None:
    source = KafkaDataSource({"kafka.bootstrap.servers": "h:1", "subscribe": "a"})
    assert KafkaDataSource.name() == "tributary_kafka"
    assert source.schema() == KAFKA_SCHEMA


# --- stream reader planning against a fake broker view ----------------------------------------


def make_reader(view: FakeLogView, **options: str) -> KafkaStreamReader:
    reader = KafkaStreamReader(
        KafkaSourceOptions.from_options({"kafka.bootstrap.servers": "h:1", "subscribe": "a,b", **options})
    )
    reader._view = view  # type: ignore[assignment]
    return reader


def test_initial_offset_from_starting_offsets() -> None:
    view = FakeLogView({A0: (3, 10), A1: (0, 20)})
    assert make_reader(view, startingOffsets="earliest").initialOffset() == {"a": {"0": 3, "1": 0}}
    assert make_reader(view).initialOffset() == {"a": {"0": 10, "1": 20}}


def test_latest_offset_reads_all_and_picks_up_new_partitions_from_earliest() -> None:
    view = FakeLogView({A0: (0, 10), A1: (0, 20)})
    reader = make_reader(view)
    start = {"a": {"0": 4, "1": 20}}
    assert reader.latestOffset(start, ReadAllAvailable()) == {"a": {"0": 10, "1": 20}}
    view.logs[B0] = (5, 9)  # topic b created after the query started
    end = reader.latestOffset(start, ReadAllAvailable())
    assert end == {"a": {"0": 10, "1": 20}, "b": {"0": 9}}
    ranges = [p.range for p in reader.partitions(start, end)]
    assert ranges == [OffsetRange("a", 0, 4, 10), OffsetRange("b", 0, 5, 9)]


def test_latest_offset_without_new_data_returns_the_start() -> None:
    reader = make_reader(FakeLogView({A0: (0, 10)}))
    start = {"a": {"0": 10}}
    assert json.dumps(reader.latestOffset(start, ReadAllAvailable())) == json.dumps(start)


def test_latest_offset_respects_read_max_rows_and_default_limit() -> None:
    reader = make_reader(FakeLogView({A0: (0, 1000), A1: (0, 500)}), maxOffsetsPerTrigger="300")
    assert reader.getDefaultReadLimit() == ReadMaxRows(300)
    start = {"a": {"0": 100, "1": 200}}  # 900 and 300 available
    assert reader.latestOffset(start, ReadMaxRows(300)) == {"a": {"0": 325, "1": 275}}
    # The engine may ask for everything regardless of the option (e.g. a final batch).
    assert reader.latestOffset(start, ReadAllAvailable()) == {"a": {"0": 1000, "1": 500}}
    with pytest.raises(ValueError, match="ReadMinRows"):
        reader.latestOffset(start, ReadMinRows(5))
    assert make_reader(FakeLogView({})).getDefaultReadLimit() == ReadAllAvailable()


def test_available_now_stops_at_the_ends_seen_when_prepared() -> None:
    view = FakeLogView({A0: (0, 10)})
    reader = make_reader(view, maxOffsetsPerTrigger="6")
    reader.prepareForTriggerAvailableNow()
    view.logs[A0] = (0, 50)  # produced after the run started
    view.logs[B0] = (0, 5)  # a topic created after the run started
    first = reader.latestOffset({"a": {"0": 0}}, ReadMaxRows(6))
    assert first == {"a": {"0": 6}, "b": {"0": 0}}
    second = reader.latestOffset(first, ReadMaxRows(6))
    assert second == {"a": {"0": 10}, "b": {"0": 0}}
    assert reader.latestOffset(second, ReadMaxRows(6)) == second  # done: the run ends


def test_latest_offset_data_loss_fails_or_skips() -> None:
    view = FakeLogView({A0: (40, 100)})
    with pytest.raises(DataLossError, match=r"a-0: records \[10, 40\)"):
        make_reader(view).latestOffset({"a": {"0": 10}}, ReadAllAvailable())
    reader = make_reader(view, failOnDataLoss="false", maxOffsetsPerTrigger="10")
    assert reader.latestOffset({"a": {"0": 10}}, ReadMaxRows(10)) == {"a": {"0": 50}}
    assert reader.records_skipped == 30


def test_latest_offset_recreated_topic() -> None:
    view = FakeLogView({A0: (0, 5)})
    with pytest.raises(DataLossError, match="beyond the end of the log"):
        make_reader(view).latestOffset({"a": {"0": 30}}, ReadAllAvailable())
    reader = make_reader(view, failOnDataLoss="false")
    start = {"a": {"0": 30}}
    end = reader.latestOffset(start, ReadAllAvailable())
    assert end == {"a": {"0": 5}}
    # The planned range is the new log, from its earliest offset.
    assert [p.range for p in reader.partitions(start, end)] == [OffsetRange("a", 0, 0, 5)]


def test_vanished_partition_is_data_loss() -> None:
    view = FakeLogView({A0: (0, 5)})
    start = {"a": {"0": 5}, "b": {"0": 3}}
    with pytest.raises(DataLossError, match="b-0 no longer exist"):
        make_reader(view).latestOffset(start, ReadAllAvailable())
    assert make_reader(view, failOnDataLoss="false").latestOffset(start, ReadAllAvailable()) == {"a": {"0": 5}}


def test_partitions_split_deterministically() -> None:
    reader = make_reader(FakeLogView({}), maxRecordsPerPartition="100")
    start, end = {"a": {"0": 0, "1": 50}}, {"a": {"0": 250, "1": 60}}
    first = [p.range for p in reader.partitions(start, end)]
    assert first == [
        OffsetRange("a", 0, 0, 84),
        OffsetRange("a", 0, 84, 167),
        OffsetRange("a", 0, 167, 250),
        OffsetRange("a", 1, 50, 60),
    ]
    assert [p.range for p in make_reader(FakeLogView({}), maxRecordsPerPartition="100").partitions(start, end)] == first
    assert reader.partitions(end, end) == []


def test_reader_and_partitions_pickle_without_the_broker_view() -> None:
    reader = make_reader(FakeLogView({A0: (0, 1)}))
    copy = pickle.loads(pickle.dumps(reader))
    assert copy._view is None and copy.options == reader.options
    partition = pickle.loads(pickle.dumps(KafkaInputPartition(OffsetRange("a", 0, 1, 2))))
    assert partition.range == OffsetRange("a", 0, 1, 2)


def test_pipeline_source_options_come_from_catalog_and_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIBUTARY_KAFKA_BOOTSTRAP", "kafka-1:9093,kafka-2:9093")
    options = pipeline_source_options(load_settings(), USER_EVENTS)
    assert options == {
        "kafka.bootstrap.servers": "kafka-1:9093,kafka-2:9093",
        "kafka.isolation.level": "read_committed",
        "subscribe": USER_EVENTS.topic.name,
        "startingOffsets": "earliest",
        "maxOffsetsPerTrigger": str(USER_EVENTS.max_offsets_per_trigger),
        "failOnDataLoss": "true",  # the catalog's on_data_loss="fail"
    }
    parsed = KafkaSourceOptions.from_options(options)
    assert parsed.max_offsets_per_trigger == USER_EVENTS.max_offsets_per_trigger
