"""What the "Streaming jobs" page shows: one row per catalog pipeline, read from the job registry.

The registry (`streaming_jobs`), the per-batch heartbeats and the supervisor's action log are
written by the jobs and the supervisor; this module only reads them, in two queries over one
connection. A pipeline the registry has never heard of is shown as stopped and never started.

    for job in job_overview(load_settings().pg_url):
        print(job.job, job.state, job.last_batch_age_s, job.input_rows_per_s)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row

from tributary.catalog import PIPELINES, PLATFORM, Pipeline
from tributary.clients import pg_connect

RECENT_ACTIONS = 5

# Heartbeats grow by one row per query and batch, and the page polls every few seconds, so both
# lookups ride on indexes: the distinct query names of a job come from a loose index scan over the
# primary key (job_name, query_name, batch_id), one min() per name, and each query's newest
# heartbeat from the (job_name, recorded_at DESC) index.
_JOBS_QUERY = """
WITH RECURSIVE wanted AS (
    SELECT job_name, position FROM unnest(%(jobs)s::text[]) WITH ORDINALITY AS w(job_name, position)
),
queries AS (
    SELECT w.job_name, (SELECT min(h.query_name) FROM {heartbeats} AS h WHERE h.job_name = w.job_name) AS query_name
    FROM wanted AS w
    UNION ALL
    SELECT q.job_name,
           (SELECT min(h.query_name) FROM {heartbeats} AS h
            WHERE h.job_name = q.job_name AND h.query_name > q.query_name)
    FROM queries AS q
    WHERE q.query_name IS NOT NULL
),
latest AS (
    SELECT q.job_name, beat.recorded_at, beat.input_rows_per_s, beat.processed_rows_per_s
    FROM queries AS q
    CROSS JOIN LATERAL (
        SELECT h.recorded_at, h.input_rows_per_s, h.processed_rows_per_s
        FROM {heartbeats} AS h
        WHERE h.job_name = q.job_name AND h.query_name = q.query_name
        ORDER BY h.recorded_at DESC
        LIMIT 1
    ) AS beat
    WHERE q.query_name IS NOT NULL
),
rates AS (
    SELECT job_name,
           max(recorded_at) AS last_batch_at,
           sum(input_rows_per_s) AS input_rows_per_s,
           sum(processed_rows_per_s) AS processed_rows_per_s
    FROM latest
    GROUP BY job_name
)
SELECT w.job_name, j.desired_state, j.actual_state, j.deploy_mode, j.pid, j.app_id, j.started_at,
       r.last_batch_at, r.input_rows_per_s, r.processed_rows_per_s, j.last_lag, j.restarts,
       j.consecutive_failures, j.last_error, j.next_restart_at
FROM wanted AS w
LEFT JOIN {jobs} AS j ON j.job_name = w.job_name
LEFT JOIN rates AS r ON r.job_name = w.job_name
ORDER BY w.position
"""

_ACTIONS_QUERY = """
SELECT w.job_name, a.at, a.action, a.reason
FROM unnest(%(jobs)s::text[]) AS w(job_name)
CROSS JOIN LATERAL (
    SELECT at, action, reason
    FROM {actions}
    WHERE job_name = w.job_name
    ORDER BY at DESC, id DESC
    LIMIT %(limit)s
) AS a
ORDER BY w.job_name, a.at DESC
"""


@dataclass(frozen=True)
class JobAction:
    """One entry of the supervisor's action log (start, restart, stop, kill, backoff, ...)."""

    at: datetime
    action: str
    reason: str | None


@dataclass(frozen=True)
class JobOverview:
    """One streaming job as the UI shows it; states are the registry's lower-case values."""

    job: str
    description: str
    desired_state: str
    state: str
    deploy_mode: str | None
    pid: int | None
    app_id: str | None
    started_at: datetime | None
    last_batch_at: datetime | None
    last_batch_age_s: float | None
    input_rows_per_s: float | None
    processed_rows_per_s: float | None
    lag: int | None
    restarts: int
    consecutive_failures: int
    last_error: str | None
    next_restart_at: datetime | None
    recent_actions: tuple[JobAction, ...]

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict: timestamps as ISO 8601 strings, actions as a list of dicts."""
        return _jsonable(asdict(self))


def job_overview(
    pg_url: str, pipelines: Iterable[Pipeline] = PIPELINES.values(), now: datetime | None = None
) -> list[JobOverview]:
    """The overview of every pipeline in `pipelines`, in that order, as of `now` (default: the clock).

    Input and processed rates are summed over the job's queries, each at its newest heartbeat;
    `last_batch_at` is the newest heartbeat of any of them.
    """
    pipelines = list(pipelines)
    names = [p.job_name for p in pipelines]
    now = now or datetime.now(UTC)
    with pg_connect(pg_url, row_factory=dict_row) as conn:
        rows = conn.execute(
            sql.SQL(_JOBS_QUERY).format(
                jobs=sql.Identifier(PLATFORM.jobs_table), heartbeats=sql.Identifier(PLATFORM.heartbeats_table)
            ),
            {"jobs": names},
        ).fetchall()
        action_rows = conn.execute(
            sql.SQL(_ACTIONS_QUERY).format(actions=sql.Identifier(PLATFORM.job_actions_table)),
            {"jobs": names, "limit": RECENT_ACTIONS},
        ).fetchall()
    actions: dict[str, list[JobAction]] = {name: [] for name in names}
    for row in action_rows:
        actions[row["job_name"]].append(JobAction(at=row["at"], action=row["action"], reason=row["reason"]))
    by_name = {row["job_name"]: row for row in rows}
    return [_overview(p, by_name[p.job_name], tuple(actions[p.job_name]), now) for p in pipelines]


def _overview(pipeline: Pipeline, row: dict[str, Any], actions: tuple[JobAction, ...], now: datetime) -> JobOverview:
    last_batch_at: datetime | None = row["last_batch_at"]
    age = None if last_batch_at is None else max(0.0, round((now - last_batch_at).total_seconds(), 1))
    return JobOverview(
        job=pipeline.job_name,
        description=pipeline.description,
        # No registry row yet: nobody ever asked for the job, so it is stopped and never started.
        desired_state=row["desired_state"] or "stopped",
        state=row["actual_state"] or "stopped",
        deploy_mode=row["deploy_mode"],
        pid=row["pid"],
        app_id=row["app_id"],
        started_at=row["started_at"],
        last_batch_at=last_batch_at,
        last_batch_age_s=age,
        input_rows_per_s=row["input_rows_per_s"],
        processed_rows_per_s=row["processed_rows_per_s"],
        lag=row["last_lag"],
        restarts=row["restarts"] or 0,
        consecutive_failures=row["consecutive_failures"] or 0,
        last_error=row["last_error"],
        next_restart_at=row["next_restart_at"],
        recent_actions=actions,
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value
