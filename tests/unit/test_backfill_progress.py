"""Backfill progress: log lines for the Airflow task log, a bar on a terminal, Spark's task counts."""

from __future__ import annotations

import io
import logging
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from spark_jobs.batch.backfill import TARGETS, BackfillReport, BackfillRequest, Chunk, Progress, TargetCounts

DAY = datetime(2026, 11, 23, tzinfo=UTC)


class FakeTracker:
    """Spark's status tracker for one job group: stages with (completed, total) tasks."""

    def __init__(self, stages: dict[int, tuple[int, int]]) -> None:
        self.stages = stages

    def getJobIdsForGroup(self, group: str) -> list[int]:  # Spark's names
        return [1]

    def getJobInfo(self, job_id: int) -> Any:
        return SimpleNamespace(stageIds=[*self.stages, 99])  # stage 99: not started, unknown

    def getStageInfo(self, stage_id: int) -> Any:
        if stage_id not in self.stages:
            return None
        done, total = self.stages[stage_id]
        return SimpleNamespace(numCompletedTasks=done, numTasks=total)


def progress(tracker: FakeTracker, bar: bool, stream: io.StringIO) -> Progress:
    spark = SimpleNamespace(sparkContext=SimpleNamespace(statusTracker=lambda: tracker))
    return Progress(spark, stream=stream, bar=bar)  # type: ignore[arg-type]


def report() -> BackfillReport:
    request = BackfillRequest("user_events", DAY, DAY + timedelta(hours=2), TARGETS)
    return BackfillReport(request, rows_planned=300_000)


def test_every_chunk_logs_rows_read_percentage_and_writes(caplog: pytest.LogCaptureFixture) -> None:
    shown = progress(FakeTracker({}), bar=False, stream=io.StringIO())
    done = report()
    with caplog.at_level(logging.INFO, logger="tributary.backfill"):
        shown.begin(done, chunks=2)
        chunk = Chunk(1, DAY, DAY + timedelta(hours=1), 120_000, DAY - timedelta(minutes=1))
        shown.chunk_started(chunk, "group-1")
        done.rows_read = 120_000
        done.targets["summaries"].add(TargetCounts(new=900_000))
        shown.chunk_done(chunk, 12.5)
        shown.end()
    lines = [r.getMessage() for r in caplog.records]
    assert "300,000 rows to read from 2026-11-23T00:00:00+00:00 to 2026-11-23T02:00:00+00:00 in 2 chunk(s)" in lines[0]
    assert lines[1].startswith("backfill user_events: read 120,000 rows (40% of 300,000); written: summaries 900,000")
    assert lines[1].endswith("chunk 1/2 in 12.5 s")


def test_chunk_progress_comes_from_spark_and_never_claims_done() -> None:
    shown = progress(FakeTracker({1: (3, 4), 2: (1, 4)}), bar=False, stream=io.StringIO())
    assert shown.chunk_fraction() == (0.0, 0, 0), "no chunk running"
    shown.chunk_started(Chunk(1, DAY, DAY + timedelta(hours=1), 1, DAY), "group-1")
    assert shown.chunk_fraction() == (0.5, 4, 8)
    finished = progress(FakeTracker({1: (4, 4)}), bar=False, stream=io.StringIO())
    finished.chunk_started(Chunk(1, DAY, DAY + timedelta(hours=1), 1, DAY), "group-1")
    assert finished.chunk_fraction()[0] == 0.99


def test_on_a_terminal_a_bar_redraws_in_place() -> None:
    stream = io.StringIO()
    shown = progress(FakeTracker({}), bar=True, stream=stream)
    done = report()
    shown.begin(done, chunks=1)
    done.rows_read = 150_000
    shown.chunk_done(Chunk(1, DAY, DAY + timedelta(hours=2), 150_000, DAY), 1.0)
    shown.end()
    drawn = stream.getvalue()
    assert drawn.startswith("\rbackfill user_events [###############...............]  50.0%")
    assert "150,000/300,000 rows" in drawn and drawn.endswith("\n")
