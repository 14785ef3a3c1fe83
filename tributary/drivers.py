"""Detached spark-submit drivers on this machine: start them, tell whether they run, stop them.

Shared by the local and standalone deploy backends (plugins/tributary_airflow/backends.py) and by
`tributary down`, which stops the drivers the registry knows without going through Airflow.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from tributary.stack.processes import read_proc_stat

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


# Popen objects of the drivers this process started, so that `kill` and `is_active` reap them
# (a long-lived caller would otherwise collect zombies and ResourceWarnings).
_children: dict[int, subprocess.Popen[bytes]] = {}


def start_detached(argv: Sequence[str], env: Mapping[str, str], log_path: Path, cwd: Path | None = None) -> int:
    """Start `argv` in a session of its own (it outlives this process), output to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        out.write(f"=== {utc_now().isoformat(timespec='seconds')} starting: {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            list(argv),
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
        )
    _children[proc.pid] = proc
    return proc.pid


def cmdline(pid: int) -> list[str]:
    """The arguments of process `pid` ([] when it is gone or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return raw.decode(errors="replace").split("\0")[:-1]


def driver_alive(pid: int, main_file: str) -> bool:
    """`pid` runs, is no zombie, and still runs `main_file` (not a PID reused by another program)."""
    _reap(pid)
    stat = read_proc_stat(pid)
    return stat is not None and not stat.is_zombie and main_file in cmdline(pid)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = read_proc_stat(int(entry.name))
            if stat is not None and stat.pgrp == pgid and not stat.is_zombie:
                members.append(stat.pid)
    return members


def stop_driver(pid: int, main_file: str, grace_s: float) -> None:
    """Ask the driver to stop (SIGTERM), SIGKILL its process group after `grace_s`; fine if gone.

    SIGTERM goes to the innermost process running `main_file`: under spark-submit that is the
    Python driver, whose handler stops the queries and returns, after which spark-submit's JVM
    exits by itself. Signalling the JVM too would run its shutdown hook, which stops the
    SparkContext under the running batch (queries end "with error", nothing is reported).
    The group is only signalled while one of its processes runs `main_file`: a PID or group id
    that the kernel has since handed to another program is left alone.
    """
    running = {member: _parent(member) for member in group_members(pid) if main_file in cmdline(member)}
    if not running:
        _reap(pid)
        return
    parents = set(running.values())
    for driver in (member for member in running if member not in parents):
        with contextlib.suppress(ProcessLookupError):
            os.kill(driver, signal.SIGTERM)
    if _wait_group_gone(pid, grace_s):
        return
    log.warning("driver %d (%s) still running %.0fs after SIGTERM; sending SIGKILL", pid, main_file, grace_s)
    _signal_group(pid, signal.SIGKILL)
    if not _wait_group_gone(pid, 10.0):
        raise RuntimeError(f"processes {group_members(pid)} of driver group {pid} survived SIGKILL")


def _parent(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(raw.rpartition(")")[2].split()[1])  # field 4 of proc(5): ppid


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group exited in the meantime
        os.killpg(pgid, sig)


def _wait_group_gone(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        _reap(pgid)
        if not group_members(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _reap(pid: int) -> None:
    proc = _children.get(pid)
    if proc is not None and proc.poll() is not None:
        del _children[pid]
