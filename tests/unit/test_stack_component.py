"""The start/wait/stop contract of a process component, with stand-in processes (no services)."""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path

import pytest

from tributary.settings import Settings, load_settings
from tributary.stack import State
from tributary.stack.broker import KafkaBroker
from tributary.stack.component import ProcessComponent
from tributary.stack.errors import BinaryMissingError, ComponentExitedError, HealthTimeoutError, StackError
from tributary.stack.health import Unhealthy
from tributary.stack.ports import free_port


class StandIn(ProcessComponent):
    """A 'service' that is a shell script; healthy once it has written its ready file."""

    name = "stand-in"
    health_timeout = 3.0
    script = "sleep 60"

    @property
    def endpoint_text(self) -> str:
        return "-"

    @property
    def ready_file(self) -> Path:
        return self.settings.state_dir / "ready"

    def command(self) -> list[str]:
        return ["sh", "-c", self.script.replace("READY", str(self.ready_file))]

    def probe(self) -> None:
        if not self.ready_file.exists():
            raise Unhealthy("no ready file yet")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return replace(load_settings(), state_dir=tmp_path / "state")


def make(settings: Settings, script: str, timeout: float = 3.0) -> StandIn:
    component = StandIn(settings, progress=None)
    component.script = script
    component.health_timeout = timeout
    return component


def test_up_then_up_again_then_down(settings: Settings) -> None:
    component = make(settings, "touch READY; exec sleep 60")
    first = component.up()
    assert first.state is State.STARTED and first.pid
    assert component.status().state is State.RUNNING
    again = make(settings, "touch READY; exec sleep 60").up()
    assert again.state is State.ALREADY_RUNNING and again.pid == first.pid
    assert component.down().state is State.STOPPED
    assert component.status().state is State.STOPPED
    assert not component.pid_file.path.exists()


def test_a_process_that_exits_early_is_reported_with_its_log(settings: Settings) -> None:
    component = make(settings, "for i in $(seq 1 30); do echo line $i; done; echo 'fatal: bad config'; exit 3")
    with pytest.raises(ComponentExitedError) as caught:
        component.up()
    message = str(caught.value)
    assert "stand-in exited during startup" in message and "fatal: bad config" in message
    assert "line 30" in message and "line 5\n" not in message  # the tail, not the whole log
    assert not component.pid_file.path.exists()


def test_a_process_that_never_gets_healthy_is_stopped_after_its_timeout(settings: Settings) -> None:
    component = make(settings, "echo starting; exec sleep 60", timeout=1.0)
    with pytest.raises(HealthTimeoutError, match=r"stand-in not healthy after 1s: no ready file yet"):
        component.up()
    assert component.status().state is State.STOPPED


def test_a_running_but_unhealthy_process_is_left_alone_with_advice(settings: Settings) -> None:
    component = make(settings, "touch READY; exec sleep 60", timeout=0.5)
    component.up()
    component.ready_file.unlink()
    assert component.status().state is State.UNHEALTHY
    with pytest.raises(StackError, match=r"running .* but unhealthy: run `tributary down` and `tributary up`"):
        make(settings, "sleep 60", timeout=0.5).up()
    assert component.down().state is State.STOPPED


def test_missing_broker_jars_name_make_setup(settings: Settings) -> None:
    broker = KafkaBroker(replace(settings, cache_dir=settings.state_dir / "empty-cache"), progress=None)
    with pytest.raises(BinaryMissingError, match=r"not installed in .*empty-cache.*: run `make setup`"):
        broker.command()


def test_embedded_broker_binds_both_listeners_to_loopback(settings: Settings) -> None:
    broker = KafkaBroker(
        replace(settings, kafka_bootstrap="localhost:19092", kafka_controller_port=19093), progress=None
    )
    props = broker.server_properties()
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["log.dirs"] == str(settings.state_dir / "kafka" / "data")


def test_broker_config_overrides_the_embedded_defaults(settings: Settings) -> None:
    broker = KafkaBroker(settings, progress=None, broker_config={"log.retention.check.interval.ms": "1000"})
    assert broker.server_properties()["log.retention.check.interval.ms"] == "1000"


def test_a_bad_heap_setting_is_named(settings: Settings) -> None:
    broker = KafkaBroker(replace(settings, kafka_heap="lots"), progress=None)
    with pytest.raises(StackError, match="TRIBUTARY_KAFKA_HEAP='lots' is not a JVM heap size"):
        broker.command()


def test_controller_port_must_differ_from_the_broker_port(settings: Settings) -> None:
    broker = KafkaBroker(replace(settings, kafka_bootstrap="127.0.0.1:19092", kafka_controller_port=19092))
    with pytest.raises(StackError, match="TRIBUTARY_KAFKA_CONTROLLER_PORT=19092 is the broker's own port"):
        broker.launch()


def test_a_taken_controller_port_names_its_setting(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = KafkaBroker(
            replace(settings, kafka_bootstrap=f"127.0.0.1:{free_port()}", kafka_controller_port=port), progress=None
        )
        with pytest.raises(StackError, match=f"port {port} .*; set TRIBUTARY_KAFKA_CONTROLLER_PORT to a free port"):
            broker.launch()
