"""Health rules and restart backoff of the streaming supervisor (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tributary.catalog import Health
from tributary.health import (
    assess,
    backoff_delay,
    backoff_schedule,
    healthy_long_enough,
    lag_keeps_growing,
    lag_records,
)

HEALTH = Health(
    max_heartbeat_age_s=120,
    start_grace_s=180,
    max_lag_records=1_000,
    lag_growth_checks=3,
    max_restarts=5,
    backoff_initial_s=30,
    backoff_max_s=600,
    healthy_reset_s=900,
)
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def test_first_restart_is_immediate_then_exponential_and_capped() -> None:
    assert [backoff_delay(n, HEALTH).total_seconds() for n in range(0, 8)] == [0, 0, 30, 60, 120, 240, 480, 600]
    assert [d.total_seconds() for d in backoff_schedule(HEALTH)] == [0, 30, 60, 120, 240]


def test_lag_is_log_end_minus_end_offsets_per_partition() -> None:
    ends = {("t", 0): 100, ("t", 1): 50, ("t", 2): 7}
    # Partition 2 never read: its whole log counts; a job ahead of the end (a topic recreated) never goes negative.
    assert lag_records(ends, {"t": {"0": 90, "1": 55}}) == 10 + 0 + 7


@pytest.mark.parametrize(
    ("samples", "growing"),
    [
        ([500, 900, 1_200, 1_500], True),
        ([900, 1_200, 1_500], False),  # not enough checks yet
        ([500, 900, 1_500, 1_500], False),  # stopped growing
        ([100, 200, 300, 400], False),  # growing but under the limit
        ([5_000, 1_100, 1_200, 1_300, 1_400], True),  # only the last checks count
    ],
)
def test_lag_must_keep_growing_past_the_limit(samples: list[int], growing: bool) -> None:
    assert lag_keeps_growing(samples, HEALTH) is growing


def test_fresh_heartbeat_is_healthy() -> None:
    verdict = assess(
        now=NOW,
        started_at=NOW - timedelta(hours=1),
        last_heartbeat_at=NOW - timedelta(seconds=20),
        lag_samples=[],
        health=HEALTH,
    )
    assert verdict.healthy


def test_stale_heartbeat_is_a_stall() -> None:
    verdict = assess(
        now=NOW,
        started_at=NOW - timedelta(hours=1),
        last_heartbeat_at=NOW - timedelta(seconds=121),
        lag_samples=[],
        health=HEALTH,
    )
    assert not verdict.healthy
    assert "stalled" in verdict.reason and "121s" in verdict.reason


def test_no_heartbeat_is_fine_during_start_grace_only() -> None:
    starting = assess(
        now=NOW, started_at=NOW - timedelta(seconds=60), last_heartbeat_at=None, lag_samples=[], health=HEALTH
    )
    assert starting.healthy
    stuck = assess(
        now=NOW, started_at=NOW - timedelta(seconds=181), last_heartbeat_at=None, lag_samples=[], health=HEALTH
    )
    assert not stuck.healthy and "no heartbeat within 180s" in stuck.reason


def test_growing_lag_is_unhealthy_even_with_fresh_heartbeats() -> None:
    verdict = assess(
        now=NOW,
        started_at=NOW - timedelta(hours=1),
        last_heartbeat_at=NOW,
        lag_samples=[1_100, 1_200, 1_300, 5_000],
        health=HEALTH,
    )
    assert not verdict.healthy and "cannot keep up" in verdict.reason


def test_backoff_resets_after_a_healthy_period() -> None:
    assert not healthy_long_enough(None, NOW, HEALTH)
    assert not healthy_long_enough(NOW - timedelta(seconds=899), NOW, HEALTH)
    assert healthy_long_enough(NOW - timedelta(seconds=900), NOW, HEALTH)
