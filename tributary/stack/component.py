"""What every stack component can do (start, wait, report, stop), and the PID-file-backed kind.

`up` is split into `launch` (checks, then start without waiting) and `await_ready` (wait until
healthy), so the stack can start several processes before waiting on any of them.
"""

from __future__ import annotations

import logging
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from tributary.settings import Endpoint, Settings
from tributary.stack.errors import StackError, UnreachableError
from tributary.stack.health import Progress, Unhealthy, wait_healthy
from tributary.stack.paths import StatePaths
from tributary.stack.ports import ensure_port_free
from tributary.stack.processes import PidFile, PidRecord, spawn, stop

log = logging.getLogger(__name__)

# How long an external service (one we do not start) gets to answer before `up` gives up.
EXTERNAL_TIMEOUT = 5.0


class State(StrEnum):
    """State of a component as `up`, `status` and `down` report it."""

    STARTED = "started"
    ALREADY_RUNNING = "already running"
    RUNNING = "running"
    EXTERNAL = "external"
    STOPPED = "stopped"
    UNHEALTHY = "unhealthy"
    UNREACHABLE = "unreachable"


HEALTHY_STATES = frozenset({State.STARTED, State.ALREADY_RUNNING, State.RUNNING, State.EXTERNAL})


@dataclass(frozen=True)
class ComponentStatus:
    """One row of the summary table."""

    name: str
    state: State
    pid: int | None
    endpoint: str
    log: Path | None
    detail: str = ""

    @property
    def healthy(self) -> bool:
        return self.state in HEALTHY_STATES


def print_progress(message: str) -> None:
    """Default progress sink: one line on stdout, flushed so `make up` shows it live."""
    print(message, flush=True)


class Component(ABC):
    """A part of the stack: PostgreSQL, the Kafka broker, the ES-API server, an Airflow process."""

    name: str = ""
    health_timeout: float = 15.0

    def __init__(self, settings: Settings, progress: Progress | None = print_progress) -> None:
        self.settings = settings
        self.paths = StatePaths(settings.state_dir)
        self.progress = progress

    @property
    def log_path(self) -> Path:
        return self.paths.log(self.name)

    @property
    def pid_file(self) -> PidFile:
        return PidFile(self.paths.pid(self.name))

    @property
    @abstractmethod
    def endpoint_text(self) -> str:
        """Where the component serves, as shown in the summary table."""

    @abstractmethod
    def needs_start(self) -> bool:
        """True when `launch` would start a process (nothing of ours runs, and we manage it)."""

    @abstractmethod
    def launch(self) -> None:
        """Check preconditions (port, binary) and start the component without waiting for it."""

    @abstractmethod
    def await_ready(self) -> ComponentStatus:
        """Wait until the launched component is healthy; raise StackError otherwise."""

    @abstractmethod
    def status(self) -> ComponentStatus:
        """Current state, without changing anything (except removing stale PID files)."""

    @abstractmethod
    def down(self) -> ComponentStatus:
        """Stop what we started for this component; harmless when nothing runs."""

    def up(self) -> ComponentStatus:
        """`launch` then `await_ready`."""
        self.launch()
        return self.await_ready()

    def _status(self, state: State, pid: int | None = None, detail: str = "") -> ComponentStatus:
        # A service we do not run has no log of ours.
        log = None if state in {State.EXTERNAL, State.UNREACHABLE} else self.log_path
        return ComponentStatus(self.name, state, pid, self.endpoint_text, log, detail)


class ProcessComponent(Component):
    """A component that is one long-running process we start, tracked by its PID file."""

    # pip package that provides the executable, named in the error when it is missing.
    package: str = ""
    # Seconds between SIGTERM and SIGKILL when stopping.
    stop_timeout: float = 15.0

    def __init__(self, settings: Settings, progress: Progress | None = print_progress) -> None:
        super().__init__(settings, progress)
        self._record: PidRecord | None = None
        self._already_running = False

    @property
    def embedded(self) -> bool:
        """False when the service is external: we only health-check it."""
        return True

    @property
    def listen(self) -> Endpoint | None:
        """The address the process listens on, checked to be free before starting."""
        return None

    @property
    def listens(self) -> list[Endpoint]:
        """Every address the process listens on (each checked to be free before starting)."""
        return [] if self.listen is None else [self.listen]

    @abstractmethod
    def command(self) -> list[str]:
        """argv of the process; raises BinaryMissingError when the executable is not installed."""

    def environment(self) -> Mapping[str, str] | None:
        """Environment of the process (None: inherit ours)."""
        return None

    @abstractmethod
    def probe(self) -> None:
        """Return when healthy, raise `Unhealthy` with the reason otherwise."""

    def external_hint(self) -> str:
        """What to check when an external service does not answer."""
        return ""

    def needs_start(self) -> bool:
        return self.embedded and self.pid_file.live() is None

    def launch(self) -> None:
        self._record = None
        self._already_running = False
        if not self.embedded:
            return
        record = self.pid_file.live()
        if record is not None:
            self._record, self._already_running = record, True
            return
        self._stop_leftovers()
        for endpoint in self.listens:
            ensure_port_free(self.name, endpoint, self.log_path)
        argv = self.command()
        self._record = spawn(argv, log_path=self.log_path, pid_file=self.pid_file, env=self.environment())
        log.info("%s started: pid %d", self.name, self._record.pid)

    def await_ready(self) -> ComponentStatus:
        if not self.embedded:
            try:
                wait_healthy(self.name, self.probe, timeout=EXTERNAL_TIMEOUT, log_path=None)
            except StackError as exc:
                raise UnreachableError(f"{self.name} (external): {exc}. {self.external_hint()}") from exc
            return self._status(State.EXTERNAL)
        record = self._record
        if record is None:
            raise StackError(f"{self.name}: await_ready() called before launch()")
        try:
            wait_healthy(
                self.name,
                self.probe,
                timeout=self.health_timeout,
                log_path=self.log_path,
                process=record,
                progress=self.progress,
            )
        except StackError as exc:
            if self._already_running:
                raise StackError(
                    f"{exc}\n{self.name} is running (pid {record.pid}) but unhealthy: "
                    "run `tributary down` and `tributary up` to restart it"
                ) from exc
            # Don't leave a half-started process behind: the next `up` starts from a clean slate.
            stop(record)
            self.pid_file.remove()
            raise
        state = State.ALREADY_RUNNING if self._already_running else State.STARTED
        return self._status(state, record.pid)

    def status(self) -> ComponentStatus:
        if not self.embedded:
            try:
                self.probe()
            except Unhealthy as exc:
                return self._status(State.UNREACHABLE, detail=str(exc))
            return self._status(State.EXTERNAL)
        record = self.pid_file.live()
        if record is None:
            return self._status(State.STOPPED)
        try:
            self.probe()
        except Unhealthy as exc:
            return self._status(State.UNHEALTHY, record.pid, str(exc))
        return self._status(State.RUNNING, record.pid)

    def down(self) -> ComponentStatus:
        # Whatever our PID file records is stopped, even if the setting has since switched the
        # component to an external service: it is still a process we started.
        try:
            record = self.pid_file.read()
        except ValueError as exc:
            log.warning("%s: %s; removing it without signalling anything", self.name, exc)
            self.pid_file.remove()
            record = None
        if record is not None:
            stop(record, timeout=self.stop_timeout)
            self.pid_file.remove()
            return self._status(State.STOPPED, record.pid)
        return self._status(State.STOPPED if self.embedded else State.EXTERNAL)

    def _stop_leftovers(self) -> None:
        """Stop children of ours whose leader died (stale PID file with live group members)."""
        try:
            record = self.pid_file.read()
        except ValueError:
            return  # `live()` has already reported and removed an unreadable file
        if record is not None and record.group_members():
            log.warning("%s: stopping processes left over from pid %d", self.name, record.pid)
            stop(record)
        self.pid_file.remove()


def python_bin(name: str) -> Path:
    """An executable installed next to the running interpreter (the venv's `bin/`)."""
    return Path(sys.executable).parent / name
