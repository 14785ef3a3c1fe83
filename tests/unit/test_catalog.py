from __future__ import annotations

from datetime import date

import pytest

from tributary.catalog import (
    PIPELINES,
    PLATFORM,
    USER_EVENTS,
    all_indices,
    all_tables,
    all_topics,
    get_pipeline,
)


def test_the_three_pipelines_are_declared() -> None:
    assert set(PIPELINES) == {"user_events", "weather", "app_logs"}


@pytest.mark.parametrize(
    "names",
    [
        [t.name for t in all_topics()],
        all_tables(),
        [i.base for i in all_indices()],
    ],
    ids=["topics", "tables", "indices"],
)
def test_names_are_unique(names: list[str]) -> None:
    assert len(names) == len(set(names)), names


def test_every_pipeline_topic_and_the_shared_topics_are_provisioned() -> None:
    names = {t.name for t in all_topics()}
    assert {p.topic.name for p in PIPELINES.values()} <= names
    assert {PLATFORM.alerts_topic.name, PLATFORM.dead_letter_topic.name} <= names


@pytest.mark.parametrize("topic", all_topics(), ids=lambda t: t.name)
def test_topics_always_carry_explicit_configs(topic) -> None:  # type: ignore[no-untyped-def]
    configs = topic.configs()
    assert int(configs["retention.ms"]) > 0
    assert configs["cleanup.policy"] in {"delete", "compact", "compact,delete"}
    assert topic.partitions >= 1


@pytest.mark.parametrize("pipeline", PIPELINES.values(), ids=lambda p: p.name)
def test_windows_are_consistent(pipeline) -> None:  # type: ignore[no-untyped-def]
    assert pipeline.windows, "a pipeline aggregates over at least one window"
    for window in pipeline.windows:
        assert window.duration_s > 0 and window.watermark_s >= 0
        if window.slide_s is not None:
            assert 0 < window.slide_s <= window.duration_s
            assert window.duration_s % window.slide_s == 0, "slides must tile the window"


def test_user_events_windows_match_the_seed() -> None:
    tumbling, sliding = USER_EVENTS.windows
    assert (tumbling.duration_s, tumbling.slide_s, tumbling.watermark_s) == (5, None, 30)
    assert (sliding.duration_s, sliding.slide_s, sliding.watermark_s) == (60, 5, 120)
    assert tumbling.spark_duration == "5 seconds" and sliding.spark_slide == "5 seconds"
    assert USER_EVENTS.anomaly is not None and USER_EVENTS.anomaly.window in USER_EVENTS.windows


def test_weather_uses_hourly_windows_with_a_ten_minute_watermark() -> None:
    (hourly,) = get_pipeline("weather").windows
    assert (hourly.duration_s, hourly.watermark_s) == (3600, 600)


def test_index_families_are_daily_with_strict_templates() -> None:
    for index in all_indices():
        body = index.template_body()
        assert body["index_patterns"] == [f"{index.base}-*"]
        assert body["template"]["mappings"]["dynamic"] == "strict"
        assert index.index_for(date(2026, 11, 23)) == f"{index.base}-2026.11.23"
        assert index.retention_days >= 1


def test_unknown_pipeline_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="app_logs, user_events, weather"):
        get_pipeline("clickstream")


def test_checkpoint_location_is_under_the_root() -> None:
    assert USER_EVENTS.checkpoint_location("/data/checkpoints/") == "/data/checkpoints/user_events"
    assert USER_EVENTS.checkpoint_location("s3a://bucket/cp") == "s3a://bucket/cp/user_events"


def test_the_catalog_is_read_only() -> None:
    with pytest.raises(TypeError):
        PIPELINES["other"] = USER_EVENTS  # type: ignore[index]
