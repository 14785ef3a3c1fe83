"""The Kafka log reader's retry rule: transient broker answers are asked again, others raise."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from tributary import kafka_log
from tributary.kafka_log import LogBounds, is_transient, retry_transient


@pytest.fixture(autouse=True)
def no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_log, "RETRY_PAUSE_S", 0.0)


def failing(codes: list[int], result: object) -> object:
    calls = iter(codes)

    def call() -> object:
        code = next(calls, None)
        if code is not None:
            raise KafkaException(KafkaError(code))
        return result

    return call


def test_a_restarting_broker_is_asked_again() -> None:
    call = failing(
        [KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError._TRANSPORT, KafkaError.LEADER_NOT_AVAILABLE], (0, 9)
    )
    assert retry_transient(call, 5.0, "offsets of t-0") == (0, 9)  # type: ignore[arg-type]


def test_a_permanent_error_raises_at_once() -> None:
    call = failing([KafkaError.TOPIC_AUTHORIZATION_FAILED], (0, 9))
    with pytest.raises(KafkaException, match="TOPIC_AUTHORIZATION_FAILED"):
        retry_transient(call, 5.0, "offsets of t-0")  # type: ignore[arg-type]


def test_the_timeout_bounds_the_retries() -> None:
    call = failing([KafkaError._TRANSPORT] * 1000, (0, 9))
    with pytest.raises(KafkaException, match="_TRANSPORT"):
        retry_transient(call, 0.0, "offsets of t-0")  # type: ignore[arg-type]


def test_which_errors_are_transient() -> None:
    assert is_transient(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))
    assert is_transient(KafkaError(KafkaError._ALL_BROKERS_DOWN))
    assert is_transient(KafkaError(KafkaError._UNKNOWN_PARTITION))  # metadata not reloaded yet
    assert not is_transient(KafkaError(KafkaError.SASL_AUTHENTICATION_FAILED))


def test_bounds_size_never_goes_negative() -> None:
    assert LogBounds(5, 9).size == 4
    assert LogBounds(9, 5).size == 0
