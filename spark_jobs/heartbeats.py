"""Per-batch heartbeats: each streaming query's progress, written to the heartbeats table.

The supervisor reads them to decide whether a job is healthy (batch age, lag from end offsets,
failed queries). A heartbeat row is keyed by (job, query, batch): the listener fills in progress,
the batch function adds its validation-violation counts; whichever comes first inserts the row.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from pyspark.sql.streaming import StreamingQueryListener

from spark_jobs.sinks.postgres import PostgresSink
from tributary.catalog import PLATFORM

log = logging.getLogger(__name__)

_UPSERT_PROGRESS = f"""
INSERT INTO {PLATFORM.heartbeats_table}
    (job_name, query_name, batch_id, recorded_at, input_rows, input_rows_per_s, processed_rows_per_s,
     durations_ms, end_offsets, watermark)
VALUES (%s, %s, %s, now(), %s, %s, %s, %s::jsonb, %s::jsonb, %s)
ON CONFLICT (job_name, query_name, batch_id) DO UPDATE SET
    recorded_at = EXCLUDED.recorded_at, input_rows = EXCLUDED.input_rows,
    input_rows_per_s = EXCLUDED.input_rows_per_s, processed_rows_per_s = EXCLUDED.processed_rows_per_s,
    durations_ms = EXCLUDED.durations_ms, end_offsets = EXCLUDED.end_offsets,
    -- A job that keeps its own watermark (no Spark event-time operator) wrote it with its counts.
    watermark = coalesce(EXCLUDED.watermark, {PLATFORM.heartbeats_table}.watermark)
"""

# What the batch function counted: violations per rule, rows behind the watermark, the watermark.
UPSERT_BATCH_COUNTS = f"""
INSERT INTO {PLATFORM.heartbeats_table} (job_name, query_name, batch_id, input_rows, violations, late_rows, watermark)
VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s)
ON CONFLICT (job_name, query_name, batch_id) DO UPDATE SET
    violations = EXCLUDED.violations, late_rows = EXCLUDED.late_rows,
    watermark = coalesce(EXCLUDED.watermark, {PLATFORM.heartbeats_table}.watermark)
"""


# Idle: move the newest heartbeat of the query to now (batch -1 stands for "idle before any batch").
_TOUCH_IDLE = f"""
INSERT INTO {PLATFORM.heartbeats_table} (job_name, query_name, batch_id, input_rows)
SELECT %s, %s, coalesce(max(batch_id), -1), 0 FROM {PLATFORM.heartbeats_table} WHERE job_name = %s AND query_name = %s
ON CONFLICT (job_name, query_name, batch_id) DO UPDATE SET recorded_at = now()
"""


def _end_offsets(progress: Any) -> dict[str, Any]:
    offsets: dict[str, Any] = {}
    for source in progress.sources:
        if source.endOffset:
            try:
                offsets.update(json.loads(source.endOffset))
            except (TypeError, ValueError):
                offsets[source.description] = source.endOffset
    return offsets


class HeartbeatListener(StreamingQueryListener):
    """Writes one heartbeat per micro-batch of every query of `job_name` (its own connection)."""

    def __init__(self, job_name: str, pg_url: str) -> None:
        self._job_name = job_name
        self._sink = PostgresSink(pg_url, application_name=f"{job_name}-heartbeats")
        self._names: dict[str, str] = {}
        self.terminated: set[str] = set()

    def onQueryStarted(self, event: Any) -> None:
        self._names[str(event.id)] = event.name or str(event.id)
        log.info("%s: query %s started (id %s)", self._job_name, event.name, event.id)

    def onQueryProgress(self, event: Any) -> None:
        progress = event.progress
        if progress.numInputRows == 0 and not progress.sources:
            return
        # Listener callbacks must not raise into Spark's listener bus; a failed heartbeat shows up
        # as a stale heartbeat, which the supervisor acts on, and is logged here with its cause.
        try:
            conn = self._sink.connection()
            with conn.transaction():
                conn.execute(
                    _UPSERT_PROGRESS,
                    (
                        self._job_name,
                        progress.name or str(progress.id),
                        progress.batchId,
                        progress.numInputRows,
                        _finite(progress.inputRowsPerSecond),
                        _finite(progress.processedRowsPerSecond),
                        json.dumps(dict(progress.durationMs)),
                        json.dumps(_end_offsets(progress)),
                        progress.eventTime.get("watermark") if progress.eventTime else None,
                    ),
                )
        except Exception:
            log.exception("%s: heartbeat for %s batch %s not written", self._job_name, progress.name, progress.batchId)

    def onQueryIdle(self, event: Any) -> None:
        # An idle query (no new records) is alive: refresh its latest heartbeat, or the supervisor
        # would take a quiet topic for a stalled job.
        name = self._names.get(str(event.id), str(event.id))
        try:
            conn = self._sink.connection()
            with conn.transaction():
                conn.execute(_TOUCH_IDLE, (self._job_name, name, self._job_name, name))
        except Exception:
            log.exception("%s: idle heartbeat for %s not written", self._job_name, name)

    def onQueryTerminated(self, event: Any) -> None:
        self.terminated.add(str(event.id))
        if event.exception:
            log.error("%s: query %s failed: %s", self._job_name, event.id, event.exception)
        else:
            log.info("%s: query %s stopped", self._job_name, event.id)


def _finite(value: float | None) -> float | None:
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return None
    return float(value)


def wait_until_reported(listener: HeartbeatListener, query_ids: list[str], timeout_s: float = 15.0) -> None:
    """Until the listener has seen every query terminate (so their last progress is written).

    The listener bus delivers events in order, after the query has stopped: removing the
    listener at once can drop the last batch's heartbeat.
    """
    deadline = time.monotonic() + timeout_s
    while not set(query_ids) <= listener.terminated and time.monotonic() < deadline:
        time.sleep(0.1)
