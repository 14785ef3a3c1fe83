"""The streaming-job registry: desired and actual state of each job, and the log of actions on it.

Three parties write here: the control DAG and `make up` (desired state), the supervisor (what it
started, killed and why, lag samples, restart bookkeeping) and the job itself (running, stopped or
failed, with its error). Every write is one short transaction of its own, so a crash between two
writes leaves a consistent row and the supervisor's next run picks up from there.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tributary.catalog import PLATFORM

JOBS = PLATFORM.jobs_table
HEARTBEATS = PLATFORM.heartbeats_table
ACTIONS = PLATFORM.job_actions_table

DESIRED_STATES = ("running", "stopped")
ACTUAL_STATES = ("starting", "running", "stopping", "stopped", "failed")


@dataclass(frozen=True)
class JobRecord:
    """One row of the registry."""

    job_name: str
    desired_state: str
    actual_state: str
    deploy_mode: str | None
    app_id: str | None
    pid: int | None
    log_path: str | None
    started_at: datetime | None
    stopped_at: datetime | None
    restarts: int
    consecutive_failures: int
    next_restart_at: datetime | None
    last_error: str | None
    updated_at: datetime
    stop_requested_at: datetime | None
    healthy_since: datetime | None
    lag_samples: list[int]
    last_lag: int | None
    submission: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> JobRecord:
        return cls(**{f.name: row[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class QueryHeartbeat:
    """The latest heartbeat of one query of a job."""

    query_name: str
    batch_id: int
    recorded_at: datetime
    end_offsets: dict[str, Any]


class JobRegistry:
    """Reads and writes the registry over one psycopg connection (autocommit off)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    # ------------------------------------------------------------------ reads
    def ensure(self, names: Iterable[str]) -> None:
        """A row (desired 'stopped') for every job that has none yet."""
        with self.conn.transaction():
            for name in names:
                self.conn.execute(f"INSERT INTO {JOBS} (job_name) VALUES (%s) ON CONFLICT DO NOTHING", (name,))

    def get(self, name: str) -> JobRecord:
        with self.conn.transaction(), self.conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(f"SELECT * FROM {JOBS} WHERE job_name = %s", (name,)).fetchone()
        if row is None:
            raise KeyError(f"job {name!r} is not in {JOBS}; run the bootstrap DAG (or `tributary up`) first")
        return JobRecord.from_row(row)

    def all(self) -> list[JobRecord]:
        with self.conn.transaction(), self.conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(f"SELECT * FROM {JOBS} ORDER BY job_name").fetchall()
        return [JobRecord.from_row(r) for r in rows]

    def latest_heartbeats(self, name: str, since: datetime | None = None) -> list[QueryHeartbeat]:
        """The newest heartbeat of each query of `name` (only those recorded after `since`)."""
        with self.conn.transaction():
            rows = self.conn.execute(
                f"""SELECT DISTINCT ON (query_name) query_name, batch_id, recorded_at, end_offsets
                    FROM {HEARTBEATS} WHERE job_name = %s AND (%s::timestamptz IS NULL OR recorded_at > %s)
                    ORDER BY query_name, recorded_at DESC""",
                (name, since, since),
            ).fetchall()
        return [QueryHeartbeat(r[0], int(r[1]), r[2], r[3] or {}) for r in rows]

    def actions(self, name: str, limit: int = 20) -> list[tuple[datetime, str, str | None]]:
        with self.conn.transaction():
            rows = self.conn.execute(
                f"SELECT at, action, reason FROM {ACTIONS} WHERE job_name = %s ORDER BY id DESC LIMIT %s",
                (name, limit),
            ).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    # ------------------------------------------------------------------ desired state
    def request_start(self, name: str, reason: str) -> None:
        """Desired 'running'; clears a failed job's restart bookkeeping (a person asked for it)."""
        with self.conn.transaction():
            self._update(
                name,
                "desired_state = 'running', stop_requested_at = NULL, consecutive_failures = 0, "
                "next_restart_at = NULL, actual_state = CASE WHEN actual_state = 'failed' THEN 'stopped' "
                "ELSE actual_state END",
            )
            self._log(name, "request_start", reason)

    def request_stop(self, name: str, reason: str) -> None:
        """Desired 'stopped': the job sees it within seconds and stops its queries cleanly."""
        with self.conn.transaction():
            self._update(
                name,
                "desired_state = 'stopped', stop_requested_at = coalesce(stop_requested_at, now()), "
                "actual_state = CASE WHEN actual_state IN ('starting', 'running') THEN 'stopping' ELSE actual_state END",
            )
            self._log(name, "request_stop", reason)

    # ------------------------------------------------------------------ supervisor
    def record_submitted(self, name: str, submission: Mapping[str, Any], *, restart: bool, reason: str) -> None:
        with self.conn.transaction():
            self._update(
                name,
                "actual_state = 'starting', deploy_mode = %s, pid = %s, app_id = %s, log_path = %s, "
                "submission = %s::jsonb, started_at = now(), stopped_at = NULL, healthy_since = NULL, "
                "lag_samples = '[]', last_lag = NULL, stop_requested_at = NULL, "
                "restarts = restarts + %s",
                (
                    submission.get("deploy_mode"),
                    submission.get("pid"),
                    submission.get("app_id"),
                    submission.get("log_path"),
                    json.dumps(dict(submission)),
                    1 if restart else 0,
                ),
            )
            self._log(name, "restart" if restart else "start", reason, dict(submission))

    def record_failure(self, name: str, error: str, next_restart_at: datetime | None, *, give_up: bool) -> None:
        """One more failure in a row; `give_up` marks the job failed until a person restarts it."""
        with self.conn.transaction():
            self._update(
                name,
                "consecutive_failures = consecutive_failures + 1, last_error = %s, next_restart_at = %s, "
                "healthy_since = NULL, actual_state = CASE WHEN %s THEN 'failed' ELSE actual_state END",
                (error, next_restart_at, give_up),
            )
            self._log(name, "failed" if give_up else "unhealthy", error)

    def record_exit(self, name: str, state: str, error: str | None = None) -> None:
        """The supervisor saw the driver gone: 'stopped' (asked to) or 'failed' (with its error).

        Clears the submission, so the same exit is never counted twice.
        """
        if state not in ("stopped", "failed"):
            raise ValueError(f"exit state must be 'stopped' or 'failed', not {state!r}")
        with self.conn.transaction():
            self._update(
                name,
                "actual_state = %s, stopped_at = now(), pid = NULL, submission = NULL, stop_requested_at = NULL, "
                "last_error = coalesce(%s, last_error)",
                (state, error),
            )

    def record_lag(self, name: str, lag: int, keep: int) -> list[int]:
        """Appends a lag sample (keeping the last `keep`); returns the samples, oldest first."""
        with self.conn.transaction():
            row = self.conn.execute(
                f"""UPDATE {JOBS} SET last_lag = %s,
                        lag_samples = (SELECT coalesce(jsonb_agg(v ORDER BY i), '[]'::jsonb) FROM (
                            SELECT v, i FROM jsonb_array_elements(lag_samples || to_jsonb(%s::bigint))
                                WITH ORDINALITY AS s(v, i) ORDER BY i DESC LIMIT %s) last),
                        updated_at = now()
                    WHERE job_name = %s RETURNING lag_samples""",
                (lag, lag, keep, name),
            ).fetchone()
        return [int(v) for v in (row[0] if row else [])]

    def record_healthy(self, name: str, reset_failures: bool) -> None:
        with self.conn.transaction():
            self._update(
                name,
                "healthy_since = coalesce(healthy_since, now())"
                + (", consecutive_failures = 0, next_restart_at = NULL" if reset_failures else ""),
            )
            if reset_failures:
                self._log(name, "healthy", "healthy long enough: restart backoff reset")

    def log(self, name: str, action: str, reason: str | None, detail: Mapping[str, Any] | None = None) -> None:
        with self.conn.transaction():
            self._log(name, action, reason, detail)

    # ------------------------------------------------------------------ the job itself
    def record_running(self, name: str, app_id: str | None) -> None:
        with self.conn.transaction():
            self._update(
                name,
                "actual_state = 'running', app_id = coalesce(%s, app_id), healthy_since = coalesce(healthy_since, now())",
                (app_id,),
            )

    def record_job_exit(self, name: str, error: str | None) -> None:
        """Written by the job as it exits: stopped cleanly, or failed with its error.

        The submission stays: the supervisor still has to see the driver gone and account for it.
        """
        with self.conn.transaction():
            self._update(
                name,
                "actual_state = %s, stopped_at = now(), last_error = coalesce(%s, last_error)",
                ("failed" if error else "stopped", error),
            )

    # ------------------------------------------------------------------ internals
    def _update(self, name: str, assignments: str, params: Sequence[Any] = ()) -> None:
        cur = self.conn.execute(
            f"UPDATE {JOBS} SET {assignments}, updated_at = now() WHERE job_name = %s",
            (*params, name),
        )
        if cur.rowcount == 0:
            raise KeyError(f"job {name!r} is not in {JOBS}; run the bootstrap DAG (or `tributary up`) first")

    def _log(self, name: str, action: str, reason: str | None, detail: Mapping[str, Any] | None = None) -> None:
        self.conn.execute(
            f"INSERT INTO {ACTIONS} (job_name, action, reason, detail) VALUES (%s, %s, %s, %s::jsonb)",
            (name, action, reason, json.dumps(dict(detail)) if detail is not None else None),
        )
