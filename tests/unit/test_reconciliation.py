"""Reconciliation logic without services: offset ranges, partition coverage, hours, backfills, summaries."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from tributary.catalog import USER_EVENTS
from tributary.reconciliation import (
    KAFKA_RAW,
    RAW_ES,
    RAW_SUMMARIES,
    BackfillRange,
    CheckResult,
    HourPositions,
    HourReport,
    LastStored,
    backfill_requests,
    closed_until,
    compare_ids,
    differing_minutes,
    format_half_open,
    format_ranges,
    hours_between,
    merge_ranges,
    offset_ranges,
    partition_coverage,
    plan_hours,
    requested_by_airflow,
    retention_skip,
    subtract_ranges,
)

H = datetime(2026, 11, 23, 10, tzinfo=UTC)
H_END = H + timedelta(hours=1)
IN_HOUR = H + timedelta(minutes=30)
# Airflow's default [scheduler] allowed_run_id_pattern.
AIRFLOW_RUN_ID = re.compile(r"^[A-Za-z0-9_.~:+-]+$")


def coverage(hour: HourPositions | None, **kwargs: object) -> CheckResult:
    args: dict[str, object] = {
        "hour_end": H_END,
        "predecessor": None,
        "log_start": 0,
        "committed_end": 10,
        "last_stored": LastStored(9, IN_HOUR),
    }
    args.update(kwargs)
    return partition_coverage("user_events", 1, hour, **args)  # type: ignore[arg-type]


CLEAN = HourPositions(partition=1, first=0, last=9, distinct=10, raw_rows=9, dead_rows=1)


# ------------------------------------------------------------------------------- offsets


def test_offsets_collapse_into_ranges() -> None:
    assert offset_ranges([7, 1, 2, 3, 5, 8, 2]) == [(1, 3), (5, 5), (7, 8)]
    assert offset_ranges([]) == []
    assert format_ranges([(1, 3), (5, 5)]) == "1-3, 5"
    assert format_ranges([(i, i) for i in range(0, 30, 2)], limit=2) == "0, 2, ... 13 more ranges"


def test_a_fully_stored_partition_passes() -> None:
    result = coverage(CLEAN)
    assert result.outcome == "ok" and result.check == KAFKA_RAW and result.scope == "user_events/1"
    assert (result.expected, result.actual) == (10, 10)
    assert result.detail["gaps"] == [] and result.detail["missing"] == 0
    assert result.message == "10 of 10 positions stored: 9 raw rows, 1 dead letters"


def test_a_gap_between_stored_offsets_is_reported_as_its_range() -> None:
    hour = replace(CLEAN, distinct=8, raw_rows=7, gaps=((4, 5),))
    result = coverage(hour)
    assert result.mismatch
    assert result.detail["gaps"] == [[4, 5]] and result.detail["missing"] == 2
    assert (result.expected, result.actual) == (10, 8)
    assert result.message.startswith("2 offsets consumed but not stored, offsets 4-5; 8 of 10 positions stored")


def test_a_gap_before_the_hours_first_offset_is_charged_to_this_hour() -> None:
    hour = replace(CLEAN, first=8, last=12, distinct=5, raw_rows=5, dead_rows=0)
    result = coverage(hour, predecessor=5, committed_end=13, last_stored=LastStored(12, IN_HOUR))
    assert result.detail["gaps"] == [[6, 7]]
    assert result.expected == 7 and result.actual == 5


def test_the_first_stored_offset_is_compared_with_the_brokers_log_start() -> None:
    hour = replace(CLEAN, first=3, distinct=7, raw_rows=7, dead_rows=0)
    assert coverage(hour).detail["gaps"] == [[0, 2]]
    # Records below the log start are gone from Kafka (retention): nothing is missing.
    assert coverage(hour, log_start=5).outcome == "ok"


def test_committed_but_unstored_offsets_after_the_last_stored_one_are_a_trailing_gap() -> None:
    result = coverage(CLEAN, committed_end=12)
    assert result.detail["gaps"] == [[10, 11]] and result.expected == 12
    # ... charged to the hour of the last stored position and later hours, not earlier ones.
    later = LastStored(9, H_END + timedelta(minutes=5))
    assert coverage(CLEAN, committed_end=12, last_stored=later).outcome == "ok"
    # A partition without a single stored position in or before the hour: all its committed offsets.
    empty = coverage(None, committed_end=3, last_stored=None)
    assert empty.detail["gaps"] == [[0, 2]] and (empty.expected, empty.actual) == (3, 0)


def test_a_partition_with_nothing_in_the_hour_and_nothing_owed_passes() -> None:
    result = coverage(None, committed_end=10, last_stored=LastStored(9, H_END + timedelta(hours=2)))
    assert result.outcome == "ok" and (result.expected, result.actual) == (0, 0)


def test_positions_stored_twice_are_surplus() -> None:
    hour = replace(CLEAN, raw_rows=10, dead_rows=2, surplus=((3, 4),))
    result = coverage(hour)
    assert result.mismatch and result.detail["surplus"] == [[3, 4]] and result.detail["duplicates"] == 2
    assert "2 offsets stored twice (raw and dead letter), offsets 3-4" in result.message
    assert (result.expected, result.actual) == (10, 12)


def test_without_committed_offsets_the_tail_is_not_checked_and_the_message_says_so() -> None:
    result = coverage(CLEAN, committed_end=None, last_stored=None)
    assert result.outcome == "ok"
    assert "no committed end offset recorded" in result.message


# ----------------------------------------------------------------- recorded lost ranges


def test_ranges_merge_and_subtract() -> None:
    assert merge_ranges([(8, 9), (0, 3), (4, 5), (2, 2), (11, 12)]) == [(0, 5), (8, 9), (11, 12)]
    assert subtract_ranges([(0, 9), (20, 29)], [(3, 4), (8, 22), (25, 25)]) == [(0, 2), (5, 7), (23, 24), (26, 29)]
    assert subtract_ranges([(0, 9)], []) == [(0, 9)]
    assert subtract_ranges([(3, 4)], [(0, 9)]) == []
    assert format_half_open([(10, 19), (40, 40)]) == "[10, 20), [40, 41)"


def test_a_lost_range_before_the_hours_first_offset_is_reported_as_lost_not_as_a_gap() -> None:
    # 6-7 were deleted by retention before the job read them; the job recorded [6, 8).
    hour = replace(CLEAN, first=8, last=12, distinct=5, raw_rows=5, dead_rows=0)
    result = coverage(hour, predecessor=5, committed_end=13, last_stored=LastStored(12, IN_HOUR), lost=[(6, 7)])
    assert result.mismatch  # the hour's data is incomplete, and nothing can refill it
    assert result.detail["gaps"] == [] and result.detail["missing"] == 0
    assert result.detail["lost"] == 2 and result.detail["lost_ranges"] == [{"from_offset": 6, "to_offset": 8}]
    assert (result.expected, result.actual) == (5, 5)
    assert result.message.startswith(
        "2 offsets deleted by Kafka retention before the job read them, recorded lost range [6, 8); 5 of 5 positions"
    )
    assert "consumed but not stored" not in result.message
    assert result.backfill is None and result.fix is not None and "kafka_lost_ranges" in result.fix


def test_only_the_recorded_part_of_a_gap_is_excused() -> None:
    # Inner gap 3-7, of which the job recorded 3-5 as lost (counted in SQL over every gap).
    hour = replace(CLEAN, distinct=5, raw_rows=5, dead_rows=0, gaps=((3, 7),), lost_in_gaps=(((3, 5), 3),))
    result = coverage(hour, lost=[(3, 5)])
    assert result.detail["gaps"] == [[6, 7]] and (result.detail["missing"], result.detail["lost"]) == (2, 3)
    assert result.expected == 7
    assert result.message.startswith(
        "2 offsets consumed but not stored, offsets 6-7; "
        "3 offsets deleted by Kafka retention before the job read them, recorded lost range [3, 6)"
    )


def test_a_lost_range_in_the_trailing_gap_is_reported_until_something_is_stored_after_it() -> None:
    result = coverage(CLEAN, committed_end=30, lost=[(10, 29)])
    assert (result.detail["gaps"], result.detail["lost"]) == ([], 20) and result.mismatch
    # A lost range no gap of the hour meets is another hour's: not reported here.
    assert coverage(CLEAN, lost=[(40, 49)]).outcome == "ok"


def test_a_summary_of_lost_ranges_says_what_to_do_instead_of_re_consuming() -> None:
    hour = replace(CLEAN, first=8, last=12, distinct=5, raw_rows=5, dead_rows=0)
    lost = coverage(hour, predecessor=5, committed_end=13, last_stored=LastStored(12, IN_HOUR), lost=[(6, 7)])
    lines = HourReport("user_events", H, H_END, (lost,)).summary().splitlines()
    assert lines[0] == "user_events 2026-11-23 10:00-11:00 UTC: FAILED, 1 mismatch"
    assert "recorded lost range [6, 8)" in lines[1]
    assert lines[2].startswith("  to fix by hand: records Kafka retention deleted before the job read them")
    assert len(lines) == 3  # no "re-consume them from the topic": Kafka no longer has them


# ------------------------------------------------------------------------------- hours


def test_hours_are_whole_utc_hours_covering_the_range() -> None:
    hours = hours_between(H + timedelta(minutes=10), H + timedelta(hours=2, minutes=1))
    assert hours == [
        (H, H + timedelta(hours=1)),
        (H + timedelta(hours=1), H + timedelta(hours=2)),
        (H + timedelta(hours=2), H + timedelta(hours=3)),
    ]
    assert hours_between(H, H_END) == [(H, H_END)]
    with pytest.raises(ValueError, match="empty hour range"):
        hours_between(H, H)
    with pytest.raises(ValueError, match="no time zone"):
        hours_between(datetime(2026, 1, 1), datetime(2026, 1, 2))


def test_an_hour_is_closed_after_the_delay_plus_the_largest_watermark() -> None:
    # user_events: 1 h delay, 2 min watermark (the sliding windows').
    assert closed_until(USER_EVENTS, H + timedelta(hours=2, minutes=2)) == H + timedelta(hours=1)
    assert closed_until(USER_EVENTS, H + timedelta(hours=2, minutes=1)) == H


def test_without_a_range_the_latest_closed_hour_or_the_hours_since_the_last_check_are_planned() -> None:
    now = H + timedelta(hours=5, minutes=30)  # closed until H+4h
    assert plan_hours(USER_EVENTS, now) == ([(H + timedelta(hours=3), H + timedelta(hours=4))], [])
    hours, _ = plan_hours(USER_EVENTS, now, last_checked_end=H + timedelta(hours=1))
    assert [h[0] for h in hours] == [H + timedelta(hours=i) for i in (1, 2, 3)]
    assert plan_hours(USER_EVENTS, now, last_checked_end=H + timedelta(hours=4)) == ([], [])
    capped, _ = plan_hours(USER_EVENTS, now, last_checked_end=H - timedelta(days=3), max_hours=2)
    assert capped == [
        (H + timedelta(hours=2), H + timedelta(hours=3)),
        (H + timedelta(hours=3), H + timedelta(hours=4)),
    ]


def test_a_requested_range_leaves_out_hours_not_closed_yet() -> None:
    now = H + timedelta(hours=2, minutes=30)  # closed until H+1h
    hours, still_open = plan_hours(USER_EVENTS, now, requested=(H, H + timedelta(hours=3)))
    assert hours == [(H, H_END)]
    assert [h[0] for h in still_open] == [H + timedelta(hours=1), H + timedelta(hours=2)]


def test_hours_past_the_hot_retention_are_skipped() -> None:
    now = H + timedelta(days=40)
    assert retention_skip(USER_EVENTS, H, now) is not None
    assert retention_skip(USER_EVENTS, now - timedelta(days=2), now) is None


# ------------------------------------------------------------------------ elasticsearch


def test_differing_minutes_and_ids() -> None:
    m = [H + timedelta(minutes=i) for i in range(3)]
    assert differing_minutes({m[0]: 5, m[1]: 3}, {m[0]: 5, m[1]: 2, m[2]: 1}) == [m[1], m[2]]
    missing, surplus = compare_ids(
        ["user_events-1-10", "user_events-0-9", "user_events-1-2", "user_events-0-1"],
        ["user_events-0-1", "user_events-0-7"],
    )
    assert missing == ["user_events-0-9", "user_events-1-2", "user_events-1-10"]
    assert surplus == ["user_events-0-7"]
    # Topics with dashes still sort by partition and offset.
    assert compare_ids(["a-b-0-10", "a-b-0-9"], [])[0] == ["a-b-0-9", "a-b-0-10"]


# ---------------------------------------------------------------------------- backfills


def es_result(start: datetime, end: datetime) -> CheckResult:
    return CheckResult(RAW_ES, "hour", "mismatch", "m", 2, 1, backfill=BackfillRange("es", start, end))


def test_backfill_requests_merge_adjacent_ranges_per_target_and_never_include_kafka_gaps() -> None:
    summaries = CheckResult(
        RAW_SUMMARIES,
        "60s/5s",
        "mismatch",
        "m",
        backfill=BackfillRange("summaries", H + timedelta(minutes=14), H + timedelta(minutes=15)),
    )
    kafka = CheckResult(KAFKA_RAW, "user_events/0", "mismatch", "gap")
    ok = CheckResult(RAW_ES, "hour", "ok", "fine", backfill=BackfillRange("es", H, H_END))
    requests = backfill_requests(
        [
            (7, "user_events", [es_result(H, H + timedelta(minutes=20)), summaries, kafka]),
            (8, "user_events", [es_result(H_END, H_END + timedelta(minutes=5)), ok]),
            (9, "user_events", [es_result(H_END + timedelta(hours=3), H_END + timedelta(hours=4))]),
        ]
    )
    assert [(r.target, r.start, r.end, r.run_ids) for r in requests] == [
        ("es", H, H + timedelta(minutes=20), (7,)),
        ("es", H_END, H_END + timedelta(minutes=5), (8,)),
        ("es", H_END + timedelta(hours=3), H_END + timedelta(hours=4), (9,)),
        ("summaries", H + timedelta(minutes=14), H + timedelta(minutes=15), (7,)),
    ]
    merged = backfill_requests(
        [(1, "user_events", [es_result(H, H_END)]), (2, "user_events", [es_result(H_END, H_END + timedelta(hours=1))])]
    )
    assert [(r.start, r.end, r.run_ids) for r in merged] == [(H, H_END + timedelta(hours=1), (1, 2))]


def test_a_backfill_request_is_the_backfill_dags_params_under_a_valid_deterministic_run_id() -> None:
    (request,) = backfill_requests([(42, "user_events", [es_result(H, H_END)])])
    assert request.conf() == {
        "pipeline": "user_events",
        "start": "2026-11-23T10:00:00+00:00",
        "end": "2026-11-23T11:00:00+00:00",
        "targets": ["es"],
        "dry_run": False,
    }
    assert AIRFLOW_RUN_ID.match(request.dag_run_id), request.dag_run_id
    assert request.dag_run_id == backfill_requests([(42, "user_events", [es_result(H, H_END)])])[0].dag_run_id
    assert (
        requested_by_airflow("tributary_reconciliation", "manual__2026")
        == "airflow:tributary_reconciliation/manual__2026"
    )


def test_backfill_ranges_survive_a_round_trip_through_json() -> None:
    b = BackfillRange("summaries", H, H_END)
    assert BackfillRange.from_json(b.to_json()) == b
    with pytest.raises(ValueError, match="unknown backfill target"):
        BackfillRange.from_json({"target": "alerts", "start": H.isoformat(), "end": H_END.isoformat()})


# ------------------------------------------------------------------------------ summary


def test_the_summary_of_a_failed_hour_names_every_mismatch_and_what_can_be_repaired() -> None:
    gap = coverage(replace(CLEAN, distinct=9, raw_rows=8, gaps=((4, 4),)))
    es = CheckResult(
        RAW_ES,
        "2026-11-23 10:00-11:00",
        "mismatch",
        "Elasticsearch has 9 documents for 10 raw rows; missing: user_events-0-3",
        10,
        9,
        backfill=BackfillRange("es", H + timedelta(minutes=3), H + timedelta(minutes=4)),
    )
    ok = CheckResult(RAW_SUMMARIES, "5s", "ok", "12 windows, all as stored", 12, 12)
    report = HourReport("user_events", H, H_END, (gap, es, ok))
    assert report.state == "failed"
    assert report.summary().splitlines() == [
        "user_events 2026-11-23 10:00-11:00 UTC: FAILED, 2 mismatches",
        "  MISMATCH kafka_raw user_events/1: 1 offset consumed but not stored, offsets 4; "
        "9 of 10 positions stored: 8 raw rows, 1 dead letters",
        "  MISMATCH raw_es 2026-11-23 10:00-11:00: Elasticsearch has 9 documents for 10 raw rows; missing: user_events-0-3",
        "  backfill needed: es 2026-11-23 10:03-10:04",
        "  Kafka offsets missing from raw cannot be rebuilt from raw: re-consume them from the topic while Kafka "
        "retains them (see each partition's gaps), or accept the loss",
    ]


def test_the_summary_of_a_clean_hour_and_of_an_error() -> None:
    clean = HourReport("user_events", H, H_END, (coverage(CLEAN), CheckResult(RAW_ES, "h", "skipped", "expired")))
    assert clean.state == "passed"
    assert clean.summary().splitlines() == [
        "user_events 2026-11-23 10:00-11:00 UTC: passed (kafka_raw)",
        "  skipped  raw_es h: expired",
    ]
    broken = HourReport("user_events", H, H_END, error="ConnectionError: no route to Elasticsearch")
    assert broken.state == "error"
    assert (
        broken.summary() == "user_events 2026-11-23 10:00-11:00 UTC: ERROR: ConnectionError: no route to Elasticsearch"
    )
