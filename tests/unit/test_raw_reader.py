"""Slicing a time range for partitioned JDBC reads: every instant in exactly one slice."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from spark_jobs.batch.raw_reader import hour_slices, time_predicates


def test_slices_cut_at_whole_hours_and_cover_the_range() -> None:
    start, end = datetime(2026, 11, 23, 10, 30, tzinfo=UTC), datetime(2026, 11, 23, 13, 0, tzinfo=UTC)
    assert hour_slices(start, end) == [
        (start, datetime(2026, 11, 23, 11, tzinfo=UTC)),
        (datetime(2026, 11, 23, 11, tzinfo=UTC), datetime(2026, 11, 23, 12, tzinfo=UTC)),
        (datetime(2026, 11, 23, 12, tzinfo=UTC), end),
    ]
    assert len(hour_slices(start, datetime(2026, 11, 24, 10, 30, tzinfo=UTC), hours_per_slice=6)) == 5


def test_predicates_are_half_open() -> None:
    start, end = datetime(2026, 11, 23, 10, tzinfo=UTC), datetime(2026, 11, 23, 11, tzinfo=UTC)
    assert time_predicates("event_ts", start, end) == [
        "event_ts >= '2026-11-23T10:00:00+00:00'::timestamptz AND event_ts < '2026-11-23T11:00:00+00:00'::timestamptz"
    ]


def test_naive_or_empty_ranges_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        hour_slices(datetime(2026, 1, 1), datetime(2026, 1, 2))
    with pytest.raises(ValueError, match="empty range"):
        hour_slices(datetime(2026, 1, 2, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC))
