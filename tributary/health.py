"""Health rules of a running streaming job and the restart backoff: pure functions, no I/O.

The supervisor gathers the facts (is the driver there, latest heartbeats, lag samples) and these
functions decide; the unit tests pin every rule down without a job or a clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

from tributary.catalog import Health


def backoff_delay(failures: int, health: Health) -> timedelta:
    """Wait before the restart that follows `failures` failures in a row: exponential, capped.

    The first restart is immediate (most deaths are one-offs: a lost executor, a killed driver);
    the second waits `backoff_initial_s`, then the wait doubles up to `backoff_max_s`.
    """
    if failures <= 1:
        return timedelta(0)
    seconds = health.backoff_initial_s * 2 ** min(failures - 2, 30)
    return timedelta(seconds=min(seconds, health.backoff_max_s))


def backoff_schedule(health: Health) -> list[timedelta]:
    """The waits before each restart up to `max_restarts` (for docs and the UI)."""
    return [backoff_delay(n, health) for n in range(1, health.max_restarts + 1)]


def lag_records(log_ends: Mapping[tuple[str, int], int], end_offsets: Mapping[str, Any]) -> int:
    """Records on the broker not yet processed: sum over partitions of log end - job end offset.

    `end_offsets` is the job's last end offsets as Spark reports them: {topic: {"partition": offset}}.
    A partition the job has not read yet counts from the start of its log (its whole end offset).
    """
    lag = 0
    for (topic, partition), end in log_ends.items():
        done = end_offsets.get(topic, {}).get(str(partition))
        lag += max(0, end - int(done)) if done is not None else max(0, end)
    return lag


def lag_keeps_growing(samples: Sequence[int], health: Health) -> bool:
    """True when the last `lag_growth_checks` samples rose every time and ended above the limit."""
    n = health.lag_growth_checks
    if len(samples) < n + 1:
        return False
    recent = list(samples[-(n + 1) :])
    rising = all(b > a for a, b in pairwise(recent))
    return rising and recent[-1] > health.max_lag_records


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    reason: str


HEALTHY = Verdict(True, "healthy")


def assess(
    *,
    now: datetime,
    started_at: datetime | None,
    last_heartbeat_at: datetime | None,
    lag_samples: Sequence[int],
    health: Health,
) -> Verdict:
    """Is a job whose driver is alive healthy? Stale heartbeat and growing lag are not.

    `last_heartbeat_at` must only count heartbeats of the current run (after `started_at`).
    """
    if last_heartbeat_at is None:
        if started_at is not None and now - started_at > timedelta(seconds=health.start_grace_s):
            return Verdict(False, f"no heartbeat within {health.start_grace_s}s of the start")
        return HEALTHY
    age = (now - last_heartbeat_at).total_seconds()
    if age > health.max_heartbeat_age_s:
        return Verdict(False, f"last heartbeat {age:.0f}s ago (limit {health.max_heartbeat_age_s}s): stalled")
    if lag_keeps_growing(lag_samples, health):
        return Verdict(
            False,
            f"lag grew at {health.lag_growth_checks} checks in a row to {lag_samples[-1]:,} records "
            f"(limit {health.max_lag_records:,}): the job cannot keep up",
        )
    return HEALTHY


def healthy_long_enough(healthy_since: datetime | None, now: datetime, health: Health) -> bool:
    """Time to forget earlier failures (reset the backoff), as continuous-job schedulers do."""
    return healthy_since is not None and now - healthy_since >= timedelta(seconds=health.healthy_reset_s)
