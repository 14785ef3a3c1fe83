"""PID files and process groups: only our processes are recognised, and stopping reaches children."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tributary.stack.processes import PidFile, PidRecord, parse_proc_stat, read_proc_stat, spawn, stop, tail


def test_proc_stat_parsing_survives_spaces_and_parentheses_in_the_command_name() -> None:
    # fields 3..21 of proc(5), then starttime (field 22) and the rest
    raw = "4242 (my (odd) name) S 1 4240 4240 0 -1 4194560 " + " ".join(["0"] * 12) + " 987654 rest"
    stat = parse_proc_stat(raw)
    assert (stat.pid, stat.state, stat.pgrp, stat.start_ticks) == (4242, "S", 4240, 987654)


def test_pid_file_round_trip(tmp_path: Path) -> None:
    pid_file = PidFile(tmp_path / "run" / "x.pid")
    assert pid_file.read() is None
    record = PidRecord(123, 456, ("tansu", "broker"))
    pid_file.write(record)
    assert pid_file.read() == record


def test_our_own_process_is_live() -> None:
    me = read_proc_stat(os.getpid())
    assert me is not None
    assert PidRecord(os.getpid(), me.start_ticks).is_alive()


def test_a_reused_pid_is_not_ours_and_its_stale_pid_file_is_removed(tmp_path: Path) -> None:
    """Same PID, different start time: the PID now belongs to someone else (here: pytest)."""
    me = read_proc_stat(os.getpid())
    assert me is not None
    record = PidRecord(os.getpid(), me.start_ticks + 10**9)
    assert not record.is_alive()
    assert record.group_members() == []
    pid_file = PidFile(tmp_path / "x.pid")
    pid_file.write(record)
    assert pid_file.live() is None
    assert not pid_file.path.exists()
    stop(record, timeout=0.5)  # must not signal pytest
    assert PidRecord(os.getpid(), me.start_ticks).is_alive()


def test_unreadable_pid_file_is_removed_not_trusted(tmp_path: Path) -> None:
    pid_file = PidFile(tmp_path / "x.pid")
    pid_file.path.write_text("12345\n")
    with pytest.raises(ValueError, match="not a Tributary PID file"):
        pid_file.read()
    assert pid_file.live() is None
    assert not pid_file.path.exists()


def test_stop_reaches_the_children_of_the_process(tmp_path: Path) -> None:
    pid_file = PidFile(tmp_path / "run" / "sleeper.pid")
    record = spawn(
        ["sh", "-c", "sleep 60 & sleep 60; wait"], log_path=tmp_path / "logs" / "sleeper.log", pid_file=pid_file
    )
    deadline = time.monotonic() + 5
    while len(record.group_members()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    members = record.group_members()
    assert len(members) == 3 and pid_file.live() == record
    stop(record, timeout=5)
    assert record.group_members() == []
    assert all(read_proc_stat(pid) is None or read_proc_stat(pid).is_zombie for pid in members)  # type: ignore[union-attr]
    assert "starting: sh -c" in (tmp_path / "logs" / "sleeper.log").read_text()


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path: Path) -> None:
    record = spawn(
        ["sh", "-c", "trap '' TERM; sleep 60"],
        log_path=tmp_path / "stubborn.log",
        pid_file=PidFile(tmp_path / "stubborn.pid"),
    )
    time.sleep(0.2)  # let the shell install its trap
    started = time.monotonic()
    stop(record, timeout=0.5)
    assert record.group_members() == []
    assert time.monotonic() - started < 5


def test_tail_returns_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    assert tail(log) == ""
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail(log, 3) == "line 97\nline 98\nline 99"


def test_a_group_id_reused_by_a_new_session_leader_is_not_ours(tmp_path: Path) -> None:
    """A dead leader's PID handed to a new session leader: its group is somebody else's."""
    newcomer = spawn(["sleep", "30"], log_path=tmp_path / "new.log", pid_file=PidFile(tmp_path / "new.pid"))
    try:
        # The same PID (and so the same group id), recorded with an earlier start: an old PID file.
        stale = PidRecord(newcomer.pid, newcomer.start_ticks - 1, ("old",))
        assert newcomer.group_members() == [newcomer.pid]
        assert stale.group_members() == []
    finally:
        stop(newcomer)
