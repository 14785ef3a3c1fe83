"""One piece of driver-side work run in a thread of its own, once more after each request.

A streaming job uses it for work that may lag behind the micro-batches without changing what
they write, such as closing windows whose data is final: the next batch's partitions are written
while the last one's windows close. Requests made while the work runs coalesce into one more run,
so the work never queues up. An error is kept and raised by the next `check()` (the job then
fails loudly and its supervisor restarts it); `drain()` waits for the work to finish.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class BackgroundTaskError(RuntimeError):
    """The background work failed; the message names the work, the cause is chained."""


class BackgroundTask:
    """Runs `work` in a daemon thread whenever requested, at most one run at a time."""

    def __init__(self, name: str, work: Callable[[], object]) -> None:
        self.name = name
        self._work = work
        self._lock = threading.Condition()
        self._requested = False
        self._running = False
        self._error: BaseException | None = None

    def request(self) -> None:
        """Ask for one more run (started now, or right after the current one)."""
        with self._lock:
            self._requested = True
            if not self._running:  # a loop that saw no request has cleared it under this lock
                self._running = True
                threading.Thread(target=self._loop, name=self.name, daemon=True).start()

    def check(self) -> None:
        """Raise the error of a failed run, if any (once)."""
        with self._lock:
            error, self._error = self._error, None
        if error is not None:
            raise BackgroundTaskError(f"{self.name} failed: {error}") from error

    def drain(self, timeout_s: float | None = None) -> None:
        """Wait until no run is requested or running, then raise its error, if any."""
        with self._lock:
            if not self._lock.wait_for(lambda: not self._running, timeout_s):
                raise BackgroundTaskError(f"{self.name} still running after {timeout_s} s")
        self.check()

    def _loop(self) -> None:
        while True:
            with self._lock:
                if not self._requested or self._error is not None:
                    self._running = False
                    self._lock.notify_all()
                    return
                self._requested = False
            try:
                self._work()
            except BaseException as exc:  # kept for check(): the job fails with it at the next batch
                log.exception("%s failed", self.name)
                with self._lock:
                    self._error = exc
