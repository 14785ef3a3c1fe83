"""The data-loss policy without a broker: lost ranges, the lostRanges.* options, the reader's
planning against a fake log view, and the catalog's `on_data_loss` in every job's source options.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from pyspark.sql.streaming.datasource import ReadAllAvailable

import spark_jobs.streaming_job as streaming_job
from spark_jobs.sources.kafka import (
    KafkaSourceOptions,
    KafkaStreamReader,
    native_source_options,
    pipeline_source_options,
)
from spark_jobs.sources.kafka_lost_ranges import LostRangeRecordError, LostRangesTable
from spark_jobs.sources.kafka_offsets import (
    DataLossError,
    LostRange,
    OffsetRange,
    check_range_end,
    range_end_loss,
    resolve_start,
    vanished_partition_loss,
)
from spark_jobs.streaming_job import JobOptions, StreamingJob
from tests.unit.fake_kafka import FakeLogView
from tributary.catalog import PIPELINES, PLATFORM, Pipeline
from tributary.settings import Settings, load_settings

A0 = ("a", 0)
BASE = {"kafka.bootstrap.servers": "h:1", "subscribe": "a,b"}
RECORDING = {
    "failOnDataLoss": "false",
    "lostRanges.pgUrl": "postgresql://tributary:secret@db:5432/tributary",
    "lostRanges.table": "kafka_lost_ranges",
    "lostRanges.job": "weather",
}


# --- lost ranges ------------------------------------------------------------------------------


def test_retention_loss_is_the_range_from_the_start_to_the_log_start() -> None:
    decision = resolve_start(A0, 10, 25, 40, fail_on_data_loss=False)
    assert decision.lost_range == LostRange("a", 0, 10, 25, decision.reason)
    assert decision.lost_range.size == 15
    assert "a-0: records [10, 25) were deleted (retention)" in decision.reason
    assert resolve_start(A0, 25, 25, 40, fail_on_data_loss=False).lost_range is None


def test_a_replaced_log_is_a_loss_of_unknown_end() -> None:
    decision = resolve_start(A0, 100, 0, 30, fail_on_data_loss=False)
    assert decision.lost_range is not None
    assert (decision.lost_range.start, decision.lost_range.end, decision.lost_range.size) == (100, None, None)


def test_a_log_ending_early_names_the_lost_range() -> None:
    assert range_end_loss(A0, 50, 50) is None
    lost = range_end_loss(A0, 50, 42)
    assert lost is not None and (lost.start, lost.end) == (42, 50)
    with pytest.raises(DataLossError, match=r"a-0: the log ends at 42 .*records \[42, 50\) are gone"):
        check_range_end(A0, 50, 42, fail_on_data_loss=True)
    assert check_range_end(A0, 50, 42, fail_on_data_loss=False) == 8


def test_a_vanished_partition_loses_everything_from_its_start() -> None:
    lost = vanished_partition_loss(("b", 3), 17)
    assert (lost.topic, lost.partition, lost.start, lost.end) == ("b", 3, 17, None)
    assert "b-3" in lost.reason and "17" in lost.reason


# --- options ----------------------------------------------------------------------------------


def test_lost_range_options_parse_case_insensitively_and_travel_to_executors() -> None:
    options = KafkaSourceOptions.from_options({**BASE, **{name.upper(): value for name, value in RECORDING.items()}})
    assert options.fail_on_data_loss is False
    assert options.lost_ranges == LostRangesTable(RECORDING["lostRanges.pgUrl"], "kafka_lost_ranges", "weather")
    assert pickle.loads(pickle.dumps(options)) == options
    assert "secret" not in repr(options.lost_ranges)  # options get logged; the URL may hold a password


def test_without_lost_range_options_skipped_ranges_are_only_logged() -> None:
    assert KafkaSourceOptions.from_options({**BASE, "failOnDataLoss": "false"}).lost_ranges is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lostRanges.job": ""}, "missing or empty: lostRanges.job"),
        ({"lostRanges.table": None}, "go together.*missing or empty: lostRanges.table"),
        ({"failOnDataLoss": "true"}, "set failOnDataLoss=false or drop the lostRanges"),
        ({"failOnDataLoss": None}, "set failOnDataLoss=false or drop the lostRanges"),  # true by default
        ({"lostRanges.table": "lost; DROP TABLE x"}, "must be a table name"),
        ({"lostRanges.pgUrl": "mysql://db/x"}, "must be a PostgreSQL URL"),
        ({"lostRanges.where": "x"}, "unknown option 'lostranges.where'"),
    ],
)
def test_lost_range_options_refused_with_reason(changes: dict[str, str | None], message: str) -> None:
    options = {**BASE, **RECORDING, **changes}
    with pytest.raises(ValueError, match=message):
        KafkaSourceOptions.from_options({name: value for name, value in options.items() if value is not None})


def test_a_schema_qualified_table_is_accepted() -> None:
    options = KafkaSourceOptions.from_options({**BASE, **RECORDING, "lostRanges.table": "ops.kafka_lost_ranges"})
    assert options.lost_ranges is not None and options.lost_ranges.table == "ops.kafka_lost_ranges"


def test_the_native_source_gets_every_option_but_the_lost_range_ones() -> None:
    options = {**BASE, **RECORDING, "LOSTRANGES.JOB": "x", "maxOffsetsPerTrigger": "5"}
    assert native_source_options(options) == {**BASE, "failOnDataLoss": "false", "maxOffsetsPerTrigger": "5"}


def test_a_failed_write_raises_naming_the_range_and_the_fix_without_the_password() -> None:
    table = LostRangesTable("postgresql://tributary:secret@127.0.0.1:1/tributary", "kafka_lost_ranges", "weather")
    lost = LostRange("a", 0, 10, 25, "a-0: records [10, 25) were deleted (retention) before they were read")
    with pytest.raises(LostRangeRecordError) as info:
        table.record([lost])
    text = str(info.value)
    assert "a-0: records [10, 25)" in text and "kafka_lost_ranges" in text and "failOnDataLoss=true" in text
    assert "secret" not in text and "***" in text


# --- the reader records what it skips while planning ------------------------------------------


@dataclass(frozen=True)
class CapturedTable(LostRangesTable):
    """A lost-ranges table that keeps what it is given instead of writing it."""

    recorded: list[LostRange] = field(default_factory=list)

    def record(self, ranges: Sequence[LostRange]) -> None:
        self.recorded.extend(ranges)


def reader_with(view: FakeLogView, **options: str) -> tuple[KafkaStreamReader, CapturedTable]:
    parsed = KafkaSourceOptions.from_options({**BASE, **RECORDING, **options})
    table = CapturedTable("postgresql://db/x", "kafka_lost_ranges", "weather")
    reader = KafkaStreamReader(replace(parsed, lost_ranges=table))
    reader._view = view  # type: ignore[assignment]
    return reader, table


def test_planning_records_every_range_it_skips() -> None:
    reader, table = reader_with(FakeLogView({A0: (40, 100), ("a", 1): (0, 9), ("b", 0): (7, 8)}))
    start = {"a": {"0": 10, "1": 3}, "b": {"0": 2, "1": 4}}  # b-1 no longer exists
    assert reader.latestOffset(start, ReadAllAvailable()) == {"a": {"0": 100, "1": 9}, "b": {"0": 8}}
    assert [(r.topic, r.partition, r.start, r.end) for r in table.recorded] == [
        ("a", 0, 10, 40),
        ("b", 0, 2, 7),
        ("b", 1, 4, None),
    ]
    assert reader.records_skipped == 35


def test_planning_a_batch_over_a_replaced_log_records_it() -> None:
    reader, table = reader_with(FakeLogView({A0: (0, 5)}))
    assert [p.range for p in reader.partitions({"a": {"0": 30}}, {"a": {"0": 5}})] == [OffsetRange("a", 0, 0, 5)]
    assert [(r.start, r.end) for r in table.recorded] == [(30, None)]


def test_fail_on_data_loss_raises_before_anything_is_recorded() -> None:
    reader = KafkaStreamReader(KafkaSourceOptions.from_options(BASE))
    reader._view = FakeLogView({A0: (40, 100)})  # type: ignore[assignment]
    with pytest.raises(DataLossError, match=r"a-0: records \[10, 40\) were deleted"):
        reader.latestOffset({"a": {"0": 10}}, ReadAllAvailable())


# --- the catalog's policy in every job's source options ---------------------------------------


def _settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("TRIBUTARY_KAFKA_BOOTSTRAP", "kafka-1:9093")
    monkeypatch.setenv("TRIBUTARY_PG_URL", "postgresql://tributary@db:5432/tributary")
    return load_settings()


def test_the_catalog_says_which_pipelines_fail_and_which_record() -> None:
    assert {name: p.on_data_loss for name, p in PIPELINES.items()} == {
        "user_events": "fail",
        "weather": "record",
        "app_logs": "record",
    }


@pytest.mark.parametrize("pipeline", PIPELINES.values(), ids=lambda p: p.name)
def test_job_source_options_follow_the_catalog_policy(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(monkeypatch)
    read: list[tuple[Any, dict[str, str], bool]] = []
    monkeypatch.setattr(
        streaming_job, "read_kafka_stream", lambda *args, **kwargs: read.append((*args, *kwargs.values()))
    )
    job = StreamingJob(None, settings, JobOptions(es_enabled=False, max_records_per_task=7), pipeline)  # type: ignore[arg-type]
    try:
        job.read()
    finally:
        job.close()
    ((_, options, use_native),) = read
    policy: dict[str, str] = (
        {"failOnDataLoss": "true"}
        if pipeline.on_data_loss == "fail"
        else {
            "failOnDataLoss": "false",
            "lostRanges.pgUrl": settings.pg_url,
            "lostRanges.table": PLATFORM.lost_ranges_table,
            "lostRanges.job": pipeline.job_name,
        }
    )
    assert options == {
        # What read() always set, with the platform's Kafka client settings and read_committed.
        "kafka.bootstrap.servers": "kafka-1:9093",
        "kafka.isolation.level": "read_committed",
        "subscribe": pipeline.topic.name,
        "startingOffsets": "earliest",
        "maxOffsetsPerTrigger": str(pipeline.max_offsets_per_trigger),
        "maxRecordsPerPartition": "7",
        **policy,
    }
    assert use_native is False
    parsed = KafkaSourceOptions.from_options(options)  # the source takes them as they are
    assert parsed.fail_on_data_loss is (pipeline.on_data_loss == "fail")
    assert (parsed.lost_ranges is None) is (pipeline.on_data_loss == "fail")


def test_run_options_override_the_catalog_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(monkeypatch)
    weather = PIPELINES["weather"]
    platform = replace(PLATFORM, lost_ranges_table="test_lost_ranges")
    options = pipeline_source_options(settings, weather, platform, starting_offsets="latest", max_offsets_per_trigger=9)
    assert (options["startingOffsets"], options["maxOffsetsPerTrigger"]) == ("latest", "9")
    assert options["lostRanges.table"] == "test_lost_ranges"
    assert "maxRecordsPerPartition" not in options  # the source's default
