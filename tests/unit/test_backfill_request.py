"""Backfill requests: instants, targets and flags as users type them, and what a pipeline refuses."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from spark_jobs.batch.backfill import (
    BACKFILLS,
    TARGETS,
    BackfillRequest,
    backfill_pipelines,
    parse_args,
    parse_bool,
    parse_instant,
    parse_targets,
)
from tributary.catalog import APP_LOGS, PIPELINES, USER_EVENTS

NOW = datetime(2026, 11, 23, 14, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-23T10:00:00Z", datetime(2026, 11, 23, 10, tzinfo=UTC)),
        ("2026-11-23T10:00:00.000Z", datetime(2026, 11, 23, 10, tzinfo=UTC)),  # the Airflow UI's form
        ("2026-11-23T10:00Z", datetime(2026, 11, 23, 10, tzinfo=UTC)),
        ("2026-11-23T12:30:00+02:00", datetime(2026, 11, 23, 10, 30, tzinfo=UTC)),
        ("2026-11-23T10:00:00.250-0100", datetime(2026, 11, 23, 11, 0, 0, 250_000, tzinfo=UTC)),
        ("2026-11-23", datetime(2026, 11, 23, tzinfo=UTC)),
        (" 2026-11-23T10:00:00Z ", datetime(2026, 11, 23, 10, tzinfo=UTC)),
    ],
)
def test_instants_are_iso_8601_with_a_zone_and_come_back_in_utc(text: str, expected: datetime) -> None:
    parsed = parse_instant(text)
    assert parsed == expected and parsed.tzinfo == UTC


@pytest.mark.parametrize(
    "text", ["2026-11-23T10:00:00", "2026-11-23 10:00:00Z", "yesterday", "", "2026-13-01T00:00:00Z"[:4], "1700000000"]
)
def test_instants_without_a_zone_or_not_iso_are_refused_with_an_example(text: str) -> None:
    with pytest.raises(ValueError, match="2026-11-23T10:00:00Z"):
        parse_instant(text, "start")


def test_an_impossible_date_that_matches_the_pattern_is_refused() -> None:
    with pytest.raises(ValueError, match="day is out of range"):
        parse_instant("2026-02-30T00:00:00Z")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("summaries", ("summaries",)),
        ("alerts, summaries", ("summaries", "alerts")),
        (["es", "anomalies", "es"], ("anomalies", "es")),
        ("summaries,anomalies,es,alerts", TARGETS),
        (",summaries,,", ("summaries",)),
    ],
)
def test_targets_are_deduplicated_in_catalog_order(value: str | list[str], expected: tuple[str, ...]) -> None:
    assert parse_targets(value) == expected


def test_unknown_or_no_targets_are_refused_listing_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown backfill target\(s\) \['raw'\]; choose from summaries, anomalies"):
        parse_targets("summaries,raw")
    with pytest.raises(ValueError, match="no backfill target given"):
        parse_targets([])
    with pytest.raises(ValueError, match="no backfill target given"):
        parse_targets(" , ")


@pytest.mark.parametrize(("value", "expected"), [(True, True), ("False", False), ("true", True), ("0", False)])
def test_flags_arrive_as_booleans_or_as_rendered_text(value: bool | str, expected: bool) -> None:
    assert parse_bool(value) is expected


def test_a_flag_that_is_neither_is_refused() -> None:
    with pytest.raises(ValueError, match="not a boolean"):
        parse_bool("maybe")


def test_request_from_user_input() -> None:
    request = BackfillRequest.parse(
        "user_events", "2026-11-23T00:00:00Z", "2026-11-23T06:00:00+01:00", ["alerts", "summaries"], "true", "cli"
    )
    assert request == BackfillRequest(
        "user_events",
        datetime(2026, 11, 23, tzinfo=UTC),
        datetime(2026, 11, 23, 5, tzinfo=UTC),
        ("summaries", "alerts"),
        dry_run=True,
        requested_by="cli",
    )


def test_request_from_datetimes_is_normalised_to_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    request = BackfillRequest.parse(
        "user_events", datetime(2026, 11, 23, 2, tzinfo=plus_two), datetime(2026, 11, 23, 3, tzinfo=UTC), "es"
    )
    assert request.start == datetime(2026, 11, 23, 0, tzinfo=UTC) and request.start.tzinfo == UTC


def test_unknown_pipelines_and_empty_ranges_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown pipeline 'clicks'; the catalog has app_logs, user_events, weather"):
        BackfillRequest.parse("clicks", "2026-11-23", "2026-11-24", "summaries")
    with pytest.raises(ValueError, match="empty range"):
        BackfillRequest.parse("user_events", "2026-11-23T10:00Z", "2026-11-23T10:00Z", "summaries")
    with pytest.raises(ValueError, match="empty range"):
        BackfillRequest.parse("user_events", "2026-11-24", "2026-11-23", "summaries")


def request(start: datetime, end: datetime, targets: tuple[str, ...] = TARGETS) -> BackfillRequest:
    return BackfillRequest("user_events", start, end, targets)


def test_a_closed_range_within_retention_passes() -> None:
    request(NOW - timedelta(days=2), NOW - timedelta(hours=1)).check(USER_EVENTS, NOW)


def test_a_range_the_streaming_job_may_still_write_is_refused_with_the_latest_end() -> None:
    with pytest.raises(ValueError, match=r"choose an end at or before 2026-11-23T13:00:00\+00:00") as refused:
        request(NOW - timedelta(hours=3), NOW - timedelta(minutes=30)).check(USER_EVENTS, NOW)
    assert "reconcile_delay_hours" in str(refused.value)
    with pytest.raises(ValueError, match="may still be writing"):
        request(NOW - timedelta(hours=3), NOW + timedelta(days=1)).check(USER_EVENTS, NOW)


def test_a_range_older_than_the_hot_retention_is_refused() -> None:
    retention = USER_EVENTS.batch.hot_retention_days
    with pytest.raises(ValueError, match=f"older than {retention} days: compaction archives"):
        request(NOW - timedelta(days=retention + 1), NOW - timedelta(days=retention)).check(USER_EVENTS, NOW)


def test_pipelines_without_a_backfill_or_a_target_are_refused() -> None:
    app_logs = BackfillRequest("app_logs", NOW - timedelta(hours=5), NOW - timedelta(hours=2), ("summaries",))
    with pytest.raises(
        ValueError, match="pipeline app_logs has no backfill yet; pipelines with one: user_events, weather"
    ):
        app_logs.check(APP_LOGS, NOW)


def test_a_target_the_pipeline_does_not_backfill_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    limited = type("SummariesOnly", (BACKFILLS["user_events"],), {"targets": ("summaries",)})
    monkeypatch.setitem(BACKFILLS, "user_events", limited)
    with pytest.raises(ValueError, match="user_events backfills summaries, not anomalies, es, alerts; drop them"):
        request(NOW - timedelta(hours=5), NOW - timedelta(hours=2)).check(USER_EVENTS, NOW)


def test_backfill_pipelines_are_the_catalog_entries_that_have_one() -> None:
    assert backfill_pipelines() == ["user_events", "weather"]
    assert set(backfill_pipelines()) <= set(PIPELINES)


def test_job_args_make_the_same_request_again() -> None:
    original = replace(
        request(datetime(2026, 11, 22, tzinfo=UTC), datetime(2026, 11, 23, tzinfo=UTC), ("summaries", "es")),
        dry_run=True,
        requested_by="airflow:tributary_backfill/manual__1",
    )
    assert original.job_args() == [
        "--pipeline",
        "user_events",
        "--start",
        "2026-11-22T00:00:00+00:00",
        "--end",
        "2026-11-23T00:00:00+00:00",
        "--targets",
        "summaries,es",
        "--dry-run",
        "--requested-by",
        "airflow:tributary_backfill/manual__1",
    ]
    args = parse_args(original.job_args())
    again = BackfillRequest.parse(args.pipeline, args.start, args.end, args.targets, args.dry_run, args.requested_by)
    assert again == original


def test_the_command_line_knows_only_pipelines_with_a_backfill(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--pipeline", "app_logs", "--start", "2026-11-23", "--end", "2026-11-24"])
    assert exited.value.code == 2
    assert "invalid choice: 'app_logs'" in capsys.readouterr().err
    # Without --targets, every target of the pipeline's backfill (main() fills them in).
    assert parse_args(["--pipeline", "user_events", "--start", "a", "--end", "b"]).targets is None
