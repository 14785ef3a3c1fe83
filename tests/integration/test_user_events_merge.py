"""The user_events merge SQL on a real PostgreSQL: buckets, 5 s rows, closing and pruning windows.

No Spark here: staged rows are COPYed as the partition writer does, then the statements of
`spark_jobs.user_events.merge` run exactly as the job runs them.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from spark_jobs.user_events.merge import (
    close_windows_statement,
    closes_a_window,
    merge_statement,
    prune_buckets_statement,
)
from spark_jobs.user_events.transforms import EVENT_COLUMNS
from tributary.catalog import USER_EVENTS
from tributary.clients import pg_connect
from tributary.migrations import apply_migrations

pytestmark = pytest.mark.integration

ACTIONS = USER_EVENTS.validation.allowed_actions  # type: ignore[union-attr]
T0 = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)
STAGE = "_stage_user_events"
MERGE = merge_statement("user_events", EVENT_COLUMNS, STAGE, "user_activity_buckets", "user_activity_summary", ACTIONS)
CLOSE = close_windows_statement("user_activity_buckets", "user_activity_summary", ACTIONS)
PRUNE = prune_buckets_statement("user_activity_buckets")


@pytest.fixture
def conn(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    apply_migrations(pg_url)
    with pg_connect(pg_url) as connection:
        connection.execute("SELECT ensure_day_partition('user_events', %s)", (T0.date(),))
        connection.execute(f"CREATE TEMP TABLE {STAGE} (LIKE user_events INCLUDING DEFAULTS)")
        connection.commit()
        yield connection


def land(conn: psycopg.Connection[Any], events: list[tuple[int, int, float, str, int]], watermark: datetime | None):
    """Stages (offset, user, seconds after T0, action, product) and merges; returns (new, late, rows)."""
    conn.execute(f"TRUNCATE {STAGE}")
    with conn.cursor() as cur, cur.copy(f"COPY {STAGE} ({', '.join(EVENT_COLUMNS)}) FROM STDIN") as copy:
        for offset, user, seconds, action, product in events:
            ts = T0 + timedelta(seconds=seconds)
            copy.write_row(("t", 0, offset, ts, ts, user, product, action, "d", "mobile", "Berlin", "regular", "::1"))
    row = conn.execute(MERGE, {"watermark": watermark, "seconds": 5}).fetchone()
    conn.commit()
    assert row is not None
    return tuple(int(v) for v in row)


def summary(conn: psycopg.Connection[Any], seconds: int) -> dict[tuple[int, int], tuple[Any, ...]]:
    rows = conn.execute(
        "SELECT user_id, extract(epoch FROM window_start - %s)::int, event_count, distinct_products, action_counts, "
        "first_event_ts, last_event_ts FROM user_activity_summary WHERE window_seconds = %s",
        (T0, seconds),
    ).fetchall()
    return {(r[0], r[1]): tuple(r[2:]) for r in rows}


def close(conn: psycopg.Connection[Any], after: datetime | None, through: datetime) -> list[tuple[Any, ...]]:
    params = {"after": after, "through": through, "seconds": 60, "slide": 5}
    rows = conn.execute(CLOSE, params).fetchall()
    if after is not None:
        conn.execute(PRUNE, params)
    conn.commit()
    return sorted((r[0], int((r[1] - T0).total_seconds()), r[3]) for r in rows)


def test_new_events_fill_buckets_and_five_second_rows_once(conn: psycopg.Connection[Any]) -> None:
    view, click = ACTIONS[0], ACTIONS[1]
    events = [(0, 1, 0.5, view, 10), (1, 1, 1.0, view, 10), (2, 1, 4.9, click, 11), (3, 2, 5.0, view, 10)]
    assert land(conn, events, None) == (4, 0, 2)
    # The same events again (a replay) change nothing; one more event adds to user 1's bucket.
    assert land(conn, events, None) == (0, 0, 0)
    assert land(conn, [(4, 1, 2.0, click, 12)], None) == (1, 0, 1)

    rows = summary(conn, 5)
    assert set(rows) == {(1, 0), (2, 5)}
    count, products, actions, first, last = rows[(1, 0)]
    assert (count, products, actions) == (4, 3, {view: 2, click: 2})
    assert (first, last) == (T0 + timedelta(seconds=0.5), T0 + timedelta(seconds=4.9))
    assert rows[(2, 5)][:3] == (1, 1, {view: 1})


def test_events_of_a_closed_five_second_window_are_late_and_only_raw(conn: psycopg.Connection[Any]) -> None:
    view = ACTIONS[0]
    watermark = T0 + timedelta(seconds=5)  # the window [0 s, 5 s) is closed, [5 s, 10 s) is open
    assert land(conn, [(0, 1, 4.0, view, 1), (1, 1, 5.0, view, 1)], watermark) == (2, 1, 1)
    assert set(summary(conn, 5)) == {(1, 5)}
    assert conn.execute("SELECT count(*) FROM user_events").fetchone() == (2,)


def test_sliding_windows_are_summed_from_buckets_when_the_watermark_closes_them(
    conn: psycopg.Connection[Any],
) -> None:
    view, click = ACTIONS[0], ACTIONS[1]
    land(conn, [(0, 1, 2.0, view, 1), (1, 1, 30.0, click, 2), (2, 1, 62.0, view, 1), (3, 2, 7.0, view, 5)], None)

    # First close: every window ending by T0+60 s; windows start 55 s before the first bucket.
    closed = close(conn, None, T0 + timedelta(seconds=60))
    assert [w for w in closed if w[0] == 1] == [(1, s, 1) for s in range(-55, -25, 5)] + [
        (1, s, 2) for s in range(-25, 5, 5)
    ]
    assert [w for w in closed if w[0] == 2] == [(2, s, 1) for s in range(-50, 5, 5)]
    window = summary(conn, 60)[(1, 0)]
    assert window[:3] == (2, 2, {view: 1, click: 1})

    # Next close: windows ending in (60 s, 70 s]; the window at 5 s holds the events at 7, 30, 62 s.
    closed = close(conn, T0 + timedelta(seconds=60), T0 + timedelta(seconds=70))
    assert closed == [(1, 5, 2), (1, 10, 2), (2, 5, 1)]
    assert summary(conn, 60)[(1, 5)][:3] == (2, 2, {click: 1, view: 1})

    # Buckets stay until every window over them closed in an earlier batch: a replay of the last
    # close (same after/through) sums the same buckets to the same rows.
    assert close(conn, T0 + timedelta(seconds=60), T0 + timedelta(seconds=70)) == closed
    left = conn.execute("SELECT count(*) FROM user_activity_buckets").fetchone()
    assert left == (3,), "the bucket at 0 s is in no open window"
    close(conn, T0 + timedelta(seconds=70), T0 + timedelta(seconds=125))
    remaining = conn.execute("SELECT extract(epoch FROM bucket_start - %s)::int FROM user_activity_buckets", (T0,))
    assert sorted(r[0] for r in remaining.fetchall()) == [30, 60], "buckets at 0 s and 5 s are done"


@pytest.mark.parametrize(
    ("after", "through", "closes"),
    [
        (None, None, False),
        (None, 0, True),
        (60, 64, False),  # no window end (a multiple of 5 s) passed
        (60, 65, True),
        (61, 64.9, False),
    ],
)
def test_a_window_closes_when_the_watermark_passes_its_end(
    after: float | None, through: float | None, closes: bool
) -> None:
    def at(seconds: float | None) -> datetime | None:
        return None if seconds is None else T0 + timedelta(seconds=seconds)

    assert closes_a_window(at(after), at(through), 60, 5) is closes
