"""Port checks and the message that tells the user which setting to change."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tributary.settings import Endpoint
from tributary.stack.errors import PortInUseError
from tributary.stack.ports import RESERVED_PORTS, ensure_port_free, free_port, port_is_free, suggest_port


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock
    sock.close()


def test_a_listening_port_is_taken_and_free_again_after_close(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    assert not port_is_free("127.0.0.1", port)
    listener.close()
    assert port_is_free("127.0.0.1", port)


def test_a_wildcard_listener_also_takes_the_loopback_address() -> None:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        assert not port_is_free("127.0.0.1", sock.getsockname()[1])


def test_free_ports_are_free_and_never_the_default_stack_ports() -> None:
    ports = {free_port() for _ in range(20)}
    assert not ports & RESERVED_PORTS
    assert all(port_is_free("127.0.0.1", p) for p in ports)


def test_suggestion_is_a_free_port(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    suggestion = suggest_port("127.0.0.1", port)
    assert suggestion != port and port_is_free("127.0.0.1", suggestion)


@pytest.mark.parametrize(
    ("setting", "fix"),
    [
        ("TRIBUTARY_KAFKA_BOOTSTRAP", "set TRIBUTARY_KAFKA_BOOTSTRAP to a free address (e.g. 127.0.0.1:"),
        ("TRIBUTARY_ES_URL", "set TRIBUTARY_ES_URL to a free address (e.g. http://127.0.0.1:"),
        ("TRIBUTARY_AIRFLOW_PORT", "set TRIBUTARY_AIRFLOW_PORT to a free port (e.g. "),
    ],
)
def test_port_in_use_names_port_setting_fix_and_log(listener: socket.socket, setting: str, fix: str) -> None:
    port = listener.getsockname()[1]
    with pytest.raises(PortInUseError) as caught:
        ensure_port_free("kafka", Endpoint("127.0.0.1", port, setting), Path("/state/logs/kafka.log"))
    message = str(caught.value)
    assert message.startswith(f"kafka: port {port} on 127.0.0.1 is already in use by another process")
    assert fix in message and "/state/logs/kafka.log" in message
