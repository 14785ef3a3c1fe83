"""Cutting a backfill range into chunks: whole hours, every row once, windows that overlap the range."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from spark_jobs.batch.backfill import (
    ROWS_PER_SLICE,
    TARGETS,
    BackfillReport,
    BackfillRequest,
    Chunk,
    TargetCounts,
    plan_chunks,
)

DAY = datetime(2026, 11, 23, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def hours(*counts: int) -> dict[datetime, int]:
    return {DAY + timedelta(hours=i): n for i, n in enumerate(counts) if n}


def test_chunks_gather_whole_hours_until_the_row_budget_is_reached() -> None:
    chunks = plan_chunks(DAY, DAY + timedelta(hours=6), hours(50, 60, 10, 0, 200, 5), 100, MINUTE)
    assert [(c.lo.hour, c.hi.hour, c.rows) for c in chunks] == [(0, 2, 110), (2, 5, 210), (5, 6, 5)]
    assert [c.number for c in chunks] == [1, 2, 3]


def test_chunks_cover_the_range_exactly_once() -> None:
    start, end = DAY + timedelta(minutes=17), DAY + timedelta(hours=30, minutes=5)
    counts = {DAY + timedelta(hours=h): 1_000 * (h % 7) for h in range(32)}
    chunks = plan_chunks(start, end, counts, 9_000, MINUTE)
    assert chunks[0].lo == start and chunks[-1].hi == end
    assert all(a.hi == b.lo for a, b in itertools.pairwise(chunks))
    assert all(c.hi.minute == 0 for c in chunks[:-1]), "cuts fall on whole hours"
    assert sum(c.rows for c in chunks) == sum(n for h, n in counts.items() if start - timedelta(hours=1) < h < end)


def test_the_first_chunk_owns_the_windows_that_start_before_the_range() -> None:
    first, second = plan_chunks(DAY, DAY + timedelta(hours=2), hours(5, 5), 5, MINUTE)
    assert first.window_lo == DAY - MINUTE and second.window_lo == second.lo
    # Its events: from the earliest window start to one window past its end.
    assert first.read_range(MINUTE) == (DAY - MINUTE, DAY + timedelta(hours=1, minutes=1))


def test_an_empty_range_is_one_chunk_of_nothing() -> None:
    [only] = plan_chunks(DAY, DAY + timedelta(hours=3), {}, 100, MINUTE)
    assert (only.lo, only.hi, only.rows) == (DAY, DAY + timedelta(hours=3), 0)


def test_a_chunk_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rows_per_chunk must be positive"):
        plan_chunks(DAY, DAY + timedelta(hours=1), {}, 0, MINUTE)


@pytest.mark.parametrize(
    ("span_hours", "rows", "expected"),
    [
        (1, 10, 1),
        (24, 24 * ROWS_PER_SLICE, 1),  # full hours: one slice per hour
        (24, ROWS_PER_SLICE, 24),  # a sparse day: one slice for all of it
        (48, 4 * ROWS_PER_SLICE, 12),  # sparse: four slices of 12 hours
    ],
)
def test_slices_are_hours_or_several_where_hours_are_sparse(span_hours: int, rows: int, expected: int) -> None:
    chunk = Chunk(2, DAY, DAY + timedelta(hours=span_hours), rows, DAY)
    assert chunk.hours_per_slice() == expected


def test_report_counts_and_progress_line() -> None:
    request = BackfillRequest("user_events", DAY, DAY + timedelta(hours=1), TARGETS, dry_run=True)
    report = BackfillReport(request, rows_planned=300_000, rows_read=120_000)
    report.targets["summaries"].add(TargetCounts(new=1_230, changed=4, unchanged=10))
    report.targets["summaries"].add(TargetCounts(unchanged=5))
    assert report.written == 1_234
    line = report.progress_line()
    assert line.startswith("backfill user_events: read 120,000 rows (40% of 300,000); would write: summaries 1,234")
    summary = report.summary()
    assert summary["targets"]["summaries"] == {"new": 1_230, "changed": 4, "unchanged": 15}
    assert set(summary["targets"]) == set(TARGETS) and summary["dry_run"] is True
    assert BackfillReport(request).percent() == 100.0, "an empty range is done at once"
