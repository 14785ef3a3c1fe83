"""The embedded Apache Kafka broker as `tributary up` runs it: persistent, loopback, clear failures."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tributary.settings import Settings, load_settings
from tributary.stack import StackError, State
from tributary.stack.broker import KafkaBroker
from tributary.stack.kafka_install import pinned_kafka_version
from tributary.stack.ports import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def broker_settings(tmp_path: Path) -> Settings:
    return replace(
        load_settings(),
        state_dir=tmp_path / "state",
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        kafka_controller_port=free_port(),
        embedded_kafka=True,
    )


@pytest.fixture
def broker(broker_settings: Settings) -> Iterator[KafkaBroker]:
    component = KafkaBroker(broker_settings, progress=None)
    try:
        yield component
    finally:
        component.down()


def test_topics_records_and_group_offsets_survive_down_and_up(broker: KafkaBroker) -> None:
    assert broker.up().state is State.STARTED
    bootstrap = broker.settings.kafka_bootstrap
    cluster_id = broker.cluster_id_file.read_text()
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic("kept", 2, 1)])["kept"].result(timeout=30)
    producer = Producer({"bootstrap.servers": bootstrap})
    for n in range(100):
        producer.produce("kept", value=str(n).encode(), partition=n % 2)
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "kept-group", "enable.auto.commit": False})
    deadline = time.monotonic() + 60
    while True:  # the first commit creates __consumer_offsets; until it has a leader: NOT_COORDINATOR
        try:
            consumer.commit(offsets=[TopicPartition("kept", 0, 30), TopicPartition("kept", 1, 40)], asynchronous=False)
            break
        except KafkaException as error:
            assert time.monotonic() < deadline, f"no group coordinator within 60 s: {error}"
            time.sleep(0.5)
    consumer.close()

    status = broker.status()
    assert status.state is State.RUNNING
    assert status.detail == f"Apache Kafka {pinned_kafka_version()}, log dir {broker.data_dir}"

    assert broker.down().state is State.STOPPED
    assert broker.up().state is State.STARTED
    assert broker.cluster_id_file.read_text() == cluster_id  # formatted once

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "kept-group", "enable.auto.commit": False})
    try:
        committed = consumer.committed([TopicPartition("kept", 0), TopicPartition("kept", 1)], timeout=30)
        assert [(tp.partition, tp.offset) for tp in committed] == [(0, 30), (1, 40)]
        ends = [consumer.get_watermark_offsets(TopicPartition("kept", p), timeout=30) for p in (0, 1)]
        assert ends == [(0, 50), (0, 50)]
    finally:
        consumer.close()


def test_both_listeners_bind_loopback_only(broker: KafkaBroker) -> None:
    import psutil

    record = broker.up()
    assert record.pid is not None
    ports = {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(record.pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }
    controller = broker.settings.kafka_controller_port
    assert {port for _, port in ports} >= {broker.listen.port, controller}
    assert all(ip in {"127.0.0.1", "::ffff:127.0.0.1"} for ip, _ in ports), ports


def test_a_bad_broker_setting_fails_naming_the_setting_and_the_log(broker_settings: Settings) -> None:
    broken = KafkaBroker(broker_settings, progress=None, broker_config={"num.io.threads": "many"})
    with pytest.raises(StackError) as failure:
        broken.up()
    message = str(failure.value)
    # The storage format step reads the configuration first and refuses it.
    assert message.startswith("kafka: formatting the log directory")
    assert str(broken.log_path) in message
    assert "num.io.threads" in message  # the broker's own complaint, from the log's tail
    assert broken.pid_file.live() is None
