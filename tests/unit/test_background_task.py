"""BackgroundTask: one run at a time, requests coalesced, errors raised at the next check."""

from __future__ import annotations

import threading

import pytest

from spark_jobs.background_task import BackgroundTask, BackgroundTaskError


def test_requests_during_a_run_coalesce_into_one_more_run() -> None:
    started, release = threading.Event(), threading.Event()
    runs: list[int] = []

    def work() -> None:
        runs.append(len(runs))
        started.set()
        release.wait(5)

    task = BackgroundTask("test work", work)
    task.request()
    assert started.wait(5)
    for _ in range(5):  # while the first run waits
        task.request()
    release.set()
    task.drain(timeout_s=5)
    assert runs == [0, 1]
    task.request()
    task.drain(timeout_s=5)
    assert runs == [0, 1, 2]


def test_runs_never_overlap() -> None:
    inside = threading.Semaphore(1)
    overlaps: list[bool] = []

    def work() -> None:
        overlaps.append(not inside.acquire(blocking=False))
        threading.Event().wait(0.01)
        inside.release()

    task = BackgroundTask("test work", work)
    for _ in range(50):
        task.request()
    task.drain(timeout_s=5)
    assert overlaps and not any(overlaps)


def test_an_error_is_raised_once_by_the_next_check_and_names_the_work() -> None:
    def work() -> None:
        raise ValueError("the database is gone")

    task = BackgroundTask("window closer", work)
    task.request()
    with pytest.raises(BackgroundTaskError, match="window closer failed: the database is gone"):
        task.drain(timeout_s=5)
    task.check()  # reported once


def test_drain_without_any_request_returns_at_once() -> None:
    BackgroundTask("idle", lambda: None).drain(timeout_s=0.1)


def test_drain_gives_up_after_its_timeout_and_says_so() -> None:
    release = threading.Event()
    task = BackgroundTask("stuck close", lambda: release.wait(5))
    task.request()
    with pytest.raises(BackgroundTaskError, match=r"stuck close still running after 0\.1 s"):
        task.drain(timeout_s=0.1)
    release.set()
    task.drain(timeout_s=5)
