"""Detached processes tracked by PID files: start, recognise as ours, stop by process group.

A PID file holds JSON `{"pid", "start_ticks", "argv"}`. `start_ticks` is the process start time
from `/proc/<pid>/stat`, so a PID that the kernel has since handed to an unrelated process is
never mistaken for ours (and never signalled). Every process is started in a session of its own,
so its process group id equals its PID and stopping the group also stops the children it forked
(Airflow's executor workers, uvicorn, dag-file parsers).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

log = logging.getLogger(__name__)

# Popen objects of the processes this Python process started, so that `stop` can reap them: a
# long-lived caller (the pytest session) would otherwise collect zombies and ResourceWarnings.
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class ProcStat:
    """The fields of `/proc/<pid>/stat` this module needs."""

    pid: int
    state: str
    pgrp: int
    start_ticks: int

    @property
    def is_zombie(self) -> bool:
        return self.state in {"Z", "X"}


def read_proc_stat(pid: int) -> ProcStat | None:
    """`/proc/<pid>/stat` of a process, or None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return parse_proc_stat(raw)


def parse_proc_stat(raw: str) -> ProcStat:
    """Parse one `/proc/<pid>/stat` line (the command name may contain spaces and parentheses)."""
    head, _, rest = raw.rpartition(")")
    fields = rest.split()
    # `fields[0]` is field 3 of proc(5): state; pgrp is field 5, starttime field 22.
    return ProcStat(
        pid=int(head.split("(", 1)[0]),
        state=fields[0],
        pgrp=int(fields[2]),
        start_ticks=int(fields[19]),
    )


@dataclass(frozen=True)
class PidRecord:
    """What a PID file records about a process we started."""

    pid: int
    start_ticks: int
    argv: tuple[str, ...] = ()

    def is_alive(self) -> bool:
        """True when the process still runs and is the one we started (not a reused PID)."""
        stat = read_proc_stat(self.pid)
        return stat is not None and not stat.is_zombie and stat.start_ticks == self.start_ticks

    def group_members(self) -> list[int]:
        """Live processes of the group this record leads (the leader included, if alive).

        Members must have started no earlier than the leader: the kernel never reuses a PID
        while a group with that id exists, so together this identifies our group even after
        the leader itself has exited.
        """
        leader = read_proc_stat(self.pid)
        if leader is not None and leader.start_ticks != self.start_ticks:
            # The PID belongs to another process now, so our group is gone: the kernel hands out a
            # PID only when no group carries it. (PIDs wrap at 32768 on these machines; without
            # this, a new session leader with a reused PID would look like ours.)
            return []
        members = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            stat = read_proc_stat(int(entry.name))
            if (
                stat is not None
                and stat.pgrp == self.pid
                and not stat.is_zombie
                and stat.start_ticks >= self.start_ticks
            ):
                members.append(stat.pid)
        return members


class PidFile:
    """The PID file of one component."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> PidRecord | None:
        """The recorded process, or None when there is no PID file.

        Raises ValueError naming the file when its content is not a PID record.
        """
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
            return PidRecord(int(data["pid"]), int(data["start_ticks"]), tuple(data.get("argv", ())))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{self.path} is not a Tributary PID file ({exc}); delete it") from exc

    def write(self, record: PidRecord) -> None:
        """Write atomically, so a concurrent reader never sees half a record."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(
            json.dumps({"pid": record.pid, "start_ticks": record.start_ticks, "argv": list(record.argv)}) + "\n"
        )
        os.replace(tmp, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def live(self) -> PidRecord | None:
        """The recorded process if it still runs; a stale or unreadable PID file is removed.

        Processes left over from a dead leader's group are not handled here; `stop` handles them.
        """
        try:
            record = self.read()
        except ValueError as exc:
            log.warning("removing unreadable PID file: %s", exc)
            self.remove()
            return None
        if record is None:
            return None
        if record.is_alive():
            return record
        if not record.group_members():
            log.info("removing stale PID file %s (pid %d is gone)", self.path, record.pid)
            self.remove()
        return None


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    pid_file: PidFile,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> PidRecord:
    """Start `argv` detached in its own session, output appended to `log_path`; record its PID."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        stamp = datetime.now().isoformat(timespec="seconds")
        out.write(f"\n=== {stamp} starting: {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            # Own session: survives the terminal/CLI that started it, and its process group
            # (pgid == pid) lets `stop` reach every child it forks.
            start_new_session=True,
        )
    _children[proc.pid] = proc
    stat = read_proc_stat(proc.pid)
    if stat is None:
        # Exited (and was reaped) before we could read it: record it anyway so the caller's
        # health wait reports the exit together with the log.
        record = PidRecord(proc.pid, -1, tuple(argv))
    else:
        record = PidRecord(proc.pid, stat.start_ticks, tuple(argv))
    pid_file.write(record)
    return record


def stop(record: PidRecord, *, timeout: float = 15.0) -> None:
    """SIGTERM the process group of `record`, SIGKILL whatever is left after `timeout` seconds.

    Only signals processes that `record` identifies as ours (see `PidRecord.group_members`).
    Raises RuntimeError if a process survives SIGKILL (only a process stuck in the kernel can).
    """
    members = record.group_members()
    if not members:
        _reap(record.pid)
        return
    _signal_group(record, signal.SIGTERM)
    if _wait_gone(record, timeout):
        return
    log.warning("pid %d did not stop within %.0fs of SIGTERM; sending SIGKILL", record.pid, timeout)
    _signal_group(record, signal.SIGKILL)
    if not _wait_gone(record, 5.0):
        raise RuntimeError(f"processes {record.group_members()} of group {record.pid} survived SIGKILL")


def _signal_group(record: PidRecord, sig: signal.Signals) -> None:
    try:
        os.killpg(record.pid, sig)
    except ProcessLookupError:
        return  # the whole group exited between our check and the signal


def _wait_gone(record: PidRecord, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        _reap(record.pid)
        if not record.group_members():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _reap(pid: int) -> None:
    """Collect the exit status of a child of this process, so it does not linger as a zombie."""
    proc = _children.get(pid)
    if proc is not None and proc.poll() is not None:
        del _children[pid]


def tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a log file ('' if it does not exist yet)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(data.splitlines()[-lines:])
