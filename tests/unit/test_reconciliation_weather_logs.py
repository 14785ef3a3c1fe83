"""Reconciliation of weather and app_logs without services: which query and index each check
reads, how SQL-recomputed summary rows are compared, and what a mismatch without a backfill says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from spark_jobs.app_logs import job as app_logs_job
from spark_jobs.batch import reconcile
from spark_jobs.batch.reconcile_summaries import (
    RECOMPUTE_FLAG,
    app_log_stats_spec,
    row_differences,
    sql_summary_result,
    values_agree,
    weather_summary_spec,
)
from spark_jobs.user_events import job as user_events_job
from spark_jobs.weather import job as weather_job
from tributary.catalog import APP_LOGS, PIPELINES, USER_EVENTS, WEATHER
from tributary.reconciliation import (
    EVENT_INDICES,
    KAFKA_RAW,
    RAW_ES,
    RAW_QUERIES,
    RAW_SUMMARIES,
    BackfillRange,
    CheckResult,
    HourReport,
    StoredRun,
    _loaded_result,
    _stored_detail,
    check_raw_es,
)
from tributary_airflow.reconcile_operators import planned_backfills

H = datetime(2026, 11, 23, 10, tzinfo=UTC)
H_END = H + timedelta(hours=1)
SUMS = {"sum_temperature": 120.5, "sum_humidity": 600.0, "sum_wind_speed": 31.25}
EXTREMES = {
    "min_temperature": 9.5,
    "max_temperature": 12.0,
    "min_humidity": 55.0,
    "max_humidity": 70.0,
    "min_wind_speed": 1.0,
    "max_wind_speed": 5.5,
}


def weather_row(count: int = 10, **changes: float) -> dict[str, Any]:
    return {"reading_count": count, **SUMS, **EXTREMES, **changes}


# ----------------------------------------------------------------------------- what is read


def test_the_kafka_check_reads_the_end_offsets_of_the_query_that_stores_raw() -> None:
    assert RAW_QUERIES["user_events"] == user_events_job.QUERY
    assert RAW_QUERIES["weather"] == weather_job.QUERY
    assert RAW_QUERIES["app_logs"] == app_logs_job.QUERY
    assert set(RAW_QUERIES) == set(PIPELINES)


def test_event_indices_are_catalog_index_families_with_a_date_field() -> None:
    assert set(EVENT_INDICES) == {"user_events", "app_logs"}
    for name, (index_key, time_field) in EVENT_INDICES.items():
        mappings = PIPELINES[name].indices[index_key].mappings
        assert mappings["properties"][time_field] == {"type": "date"}, (name, time_field)


def test_weather_has_no_documents_to_compare_and_says_so() -> None:
    # Decided from the catalog alone: neither the database nor Elasticsearch is touched.
    result = check_raw_es(None, None, WEATHER, H, H_END, now=H_END)  # type: ignore[arg-type]
    assert result.outcome == "skipped" and not result.mismatch
    assert result.message == (
        "weather keeps no Elasticsearch document per raw row (the catalog names no index for it); nothing to compare"
    )


def test_backfill_targets_come_from_the_backfill_job() -> None:
    assert reconcile.backfill_targets(WEATHER) == ("summaries",)
    assert reconcile.backfill_targets(APP_LOGS) == ()
    assert {"summaries", "es"} <= set(reconcile.backfill_targets(USER_EVENTS))


# ------------------------------------------------------------------------------- comparing


def test_floats_agree_within_the_relative_tolerance_and_others_only_when_equal() -> None:
    assert values_agree(21759.700000000037, 21759.7, 1e-9)
    assert not values_agree(21759.7, 21759.8, 1e-9)
    assert values_agree(1e-12, 0.0, 1e-9), "magnitudes below 1 compare absolutely"
    assert not values_agree(None, 0.0, 1e-9) and values_agree(None, None, 1e-9)
    assert not values_agree(21759.700000000037, 21759.7, None), "exact fields"
    assert values_agree(12, 12, None)


def test_row_differences_are_missing_surplus_or_differing_fields_in_key_order() -> None:
    a, b, c = (H, "ST1"), (H, "ST2"), (H, "ST3")
    recomputed = {a: weather_row(), b: weather_row(sum_temperature=120.5 + 1e-10), c: weather_row(count=3)}
    stored = {
        b: weather_row(),
        c: weather_row(count=4, max_temperature=13.0, sum_humidity=600.5),
        (H, "ST4"): weather_row(),
    }
    spec = weather_summary_spec("weather_summary")
    differences = row_differences(recomputed, stored, spec.exact, spec.approx)
    assert [(d.key, d.kind) for d in differences] == [(a, "missing"), (c, "differs"), ((H, "ST4"), "surplus")]
    assert differences[1].fields == {
        "reading_count": (3, 4),
        "max_temperature": (12.0, 13.0),
        "sum_humidity": (600.0, 600.5),
    }
    assert differences[0].fields["reading_count"] == (10, None)


def test_a_weather_mismatch_names_the_station_and_window_and_asks_for_the_backfill_of_whole_hours() -> None:
    spec = weather_summary_spec("weather_summary")
    recomputed = {(H, "*"): weather_row(count=20), (H, "ST00007"): weather_row(count=9)}
    stored = {(H, "*"): weather_row(count=20), (H, "ST00007"): weather_row(count=10)}
    result = sql_summary_result(
        spec, WEATHER, WEATHER.windows[0], recomputed, stored, H, H_END, ("summaries",), {"unfolded_late": 2}
    )
    assert (result.check, result.scope, result.outcome, result.expected, result.actual) == (
        RAW_SUMMARIES,
        "3600s",
        "mismatch",
        2,
        2,
    )
    assert result.message == (
        "1 of 2 windows differs (1 with other values, 0 not stored, 0 without raw rows): "
        "station ST00007 window 2026-11-23 10:00: reading_count 9 recomputed, 10 stored"
    )
    assert result.detail["windows"] == [
        {
            "window_start": H.isoformat(),
            "station_id": "ST00007",
            "window_seconds": 3600,
            "kind": "differs",
            "fields": {"reading_count": {"recomputed": 9, "stored": 10}},
        }
    ]
    assert "relative tolerance of 1e-09" in result.detail["tolerance"] and result.detail["unfolded_late"] == 2
    assert result.backfill == BackfillRange("summaries", H, H_END) and result.fix is None


def test_an_app_logs_mismatch_has_no_backfill_but_the_command_that_recomputes_the_hour() -> None:
    spec = app_log_stats_spec("app_log_minute_stats")
    minute = H + timedelta(minutes=5)
    row = {
        "requests": 3,
        "errors_4xx": 1,
        "errors_5xx": 0,
        "bytes": 900,
        "p95_latency_ms": 80.25,
        "avg_latency_ms": 40.0,
    }
    recomputed = {(minute, "*", "*"): row, (minute, "GET", "/api/items/{id}"): row}
    stored = {(minute, "*", "*"): {**row, "p95_latency_ms": 80.25 * (1 + 1e-12)}, (minute, "GET", "/old"): row}
    result = sql_summary_result(spec, APP_LOGS, APP_LOGS.windows[0], recomputed, stored, H, H_END, (), {})
    assert result.mismatch and result.backfill is None
    assert result.message == (
        "2 of 2 windows differ (0 with other values, 1 not stored, 1 without raw rows): "
        "GET /api/items/{id} minute 2026-11-23 10:05 not stored; GET /old minute 2026-11-23 10:05 stored, "
        "but raw has nothing for it"
    )
    assert result.fix is not None
    assert (
        "python -m spark_jobs.batch.reconcile --pipeline app_logs --start 2026-11-23T10:00Z "
        f"--end 2026-11-23T11:00Z {RECOMPUTE_FLAG}"
    ) in result.fix
    report = HourReport("app_logs", H, H_END, (result,))
    assert report.summary().splitlines()[-1] == f"  to fix by hand: {result.fix}"
    assert "backfill needed" not in report.summary()


def test_a_clean_weather_hour_mentions_the_late_readings_left_out() -> None:
    spec = weather_summary_spec("weather_summary")
    rows = {(H, "*"): weather_row(), (H, "ST1"): weather_row()}
    result = sql_summary_result(
        spec, WEATHER, WEATHER.windows[0], rows, dict(rows), H, H_END, ("summaries",), {}, "3 late readings ..."
    )
    assert (result.outcome, result.message) == ("ok", "2 windows, all as stored; 3 late readings ...")


# ------------------------------------------------------------------------ stored and planned


def test_a_fix_survives_the_results_table() -> None:
    result = CheckResult(RAW_ES, "h", "mismatch", "1 missing", 2, 1, {"index": "x-*"}, fix="re-create x-1-2")
    detail = _stored_detail(result)
    assert detail["fix"] == "re-create x-1-2"
    assert _loaded_result(RAW_ES, "h", "mismatch", 2, 1, detail) == result


def stored_run(run_id: int, pipeline: str, *results: CheckResult) -> StoredRun:
    return StoredRun(run_id, pipeline, H, H_END, "failed", None, False, (), results)


def test_only_backfills_that_exist_are_planned() -> None:
    es = CheckResult(RAW_ES, "h", "mismatch", "m", backfill=BackfillRange("es", H, H + timedelta(minutes=1)))
    summaries = CheckResult(RAW_SUMMARIES, "w", "mismatch", "m", backfill=BackfillRange("summaries", H, H_END))
    gap = CheckResult(KAFKA_RAW, "t/0", "mismatch", "gap")
    runs = [stored_run(1, "app_logs", es, summaries), stored_run(2, "weather", es, summaries, gap)]
    assert [(r.pipeline, r.target, r.start, r.end, r.run_ids) for r in planned_backfills(runs)] == [
        ("weather", "summaries", H, H_END, (2,))
    ]


def test_recomputing_summaries_needs_a_range_and_a_pipeline_that_has_the_recomputation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = reconcile.parse_args(
        ["--pipeline", "app_logs", "--start", "2026-11-23T10:00Z", "--end", "2026-11-23T11:00Z"]
    )
    assert not args.recompute_summaries
    args = reconcile.parse_args(
        ["--pipeline", "all", "--start", "2026-11-23T10:00Z", "--end", "2026-11-23T11:00Z", RECOMPUTE_FLAG]
    )
    assert args.recompute_summaries
    with pytest.raises(SystemExit):
        reconcile.parse_args(["--pipeline", "app_logs", RECOMPUTE_FLAG])
    assert "give --start and --end" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        reconcile.parse_args(
            ["--pipeline", "weather", "--start", "2026-11-23T10:00Z", "--end", "2026-11-23T11:00Z", RECOMPUTE_FLAG]
        )
    assert "weather has no SQL recomputation" in capsys.readouterr().err
