"""The `tributary` command line, on a state directory where nothing runs (no services needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tributary.cli import COMMANDS, build_parser, main
from tributary.stack.ports import free_port


@pytest.fixture
def idle_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Settings whose ports are all free and closed, with an empty state directory."""
    state = tmp_path / "state"
    monkeypatch.setenv("TRIBUTARY_STATE_DIR", str(state))
    pg_port = free_port()
    monkeypatch.setenv("TRIBUTARY_PG_URL", f"postgresql://postgres@127.0.0.1:{pg_port}/tributary")
    monkeypatch.setenv("TRIBUTARY_AIRFLOW_DB_URL", f"postgresql://postgres@127.0.0.1:{pg_port}/airflow")
    monkeypatch.setenv("TRIBUTARY_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("TRIBUTARY_ES_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("TRIBUTARY_AIRFLOW_PORT", str(free_port()))
    return state


def test_every_subcommand_has_help() -> None:
    parser = build_parser()
    for name, func in COMMANDS.items():
        assert func.__doc__, f"{name} needs a docstring: its first line is the help"
        assert parser.parse_args([name]).command == name


def test_settings_prints_every_variable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["settings"]) == 0
    out = capsys.readouterr().out
    assert "TRIBUTARY_KAFKA_BOOTSTRAP" in out and "TRIBUTARY_AIRFLOW_PORT" in out


def test_a_malformed_setting_is_an_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TRIBUTARY_AIRFLOW_PORT", "eighty")
    assert main(["status"]) == 2
    assert "TRIBUTARY_AIRFLOW_PORT" in capsys.readouterr().err


def test_status_of_a_stack_that_never_ran_is_stopped_and_fails(
    idle_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status"]) == 1
    out = capsys.readouterr().out
    for component in ("postgres", "kafka", "elasticsearch", "airflow-api-server", "airflow-triggerer"):
        assert any(line.split()[:2] == [component, "stopped"] for line in out.splitlines()), out


def test_down_when_nothing_runs_is_harmless(idle_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["down"]) == 0
    assert "kafka: stopped" in capsys.readouterr().out
