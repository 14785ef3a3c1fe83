"""The outbox: outgoing Kafka messages committed with the rows that cause them, then published.

A replayed batch inserts nothing new (unique `dedup_key`), so it cannot publish twice; a crash
between commit and publish leaves rows unpublished, and the next run publishes them, so none is
lost. A crash between produce and mark can re-send a message: every message carries its
`dedup_key` in a header, so consumers can drop the repeat.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from spark_jobs.sinks.postgres import MergeTarget, PostgresSink, SinkError
from tributary.catalog import PLATFORM

log = logging.getLogger(__name__)

# How long a publish waits for the broker to confirm: as long as the Kafka source waits for
# records (kafkaConsumer.pollTimeoutMs), so a job rides out a broker restart instead of failing
# its batch; a longer outage fails the job and the supervisor restarts it.
BROKER_OUTAGE_TOLERANCE_S = 120.0

OUTBOX = MergeTarget(
    PLATFORM.outbox_table,
    ("dedup_key", "topic", "message_key", "payload"),
    key=("dedup_key",),
)


def outbox_rows(df: DataFrame, *, topic: str, dedup_key: Column, message_key: Column, payload: Column) -> DataFrame:
    """Outbox rows (the OUTBOX target's columns) for every row of `df`."""
    return df.select(
        dedup_key.alias("dedup_key"),
        F.lit(topic).alias("topic"),
        message_key.alias("message_key"),
        F.to_json(payload).alias("payload"),
    )


@dataclass
class PublishResult:
    published: int = 0
    failed: int = 0


class OutboxPublisher:
    """Publishes unpublished outbox rows in id order and marks them."""

    def __init__(self, sink: PostgresSink, producer_config: dict[str, Any], *, batch_size: int = 5_000) -> None:
        config = {"enable.idempotence": True, "acks": "all", "linger.ms": 5, **producer_config}
        self._producer: Producer | None = Producer(config)
        self._sink = sink
        self._batch_size = batch_size

    def publish_pending(self, *, timeout_s: float = BROKER_OUTAGE_TOLERANCE_S) -> PublishResult:
        total = PublishResult()
        while True:
            result = self._publish_one_batch(timeout_s)
            total.published += result.published
            total.failed += result.failed
            if result.failed:
                raise SinkError(
                    f"outbox: {result.failed} message(s) could not be published to Kafka (kept, with the error "
                    f"in outbox.last_error, and retried on the next batch); check TRIBUTARY_KAFKA_BOOTSTRAP"
                )
            if result.published < self._batch_size:
                return total

    def _publish_one_batch(self, timeout_s: float) -> PublishResult:
        producer = self._producer
        if producer is None:
            raise SinkError("outbox: the publisher is closed; the job is stopping")
        conn = self._sink.connection()
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(
                f"SELECT id, topic, message_key, payload::text, dedup_key FROM {PLATFORM.outbox_table} "
                "WHERE published_at IS NULL ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
                (self._batch_size,),
            )
            rows = cur.fetchall()
            if not rows:
                return PublishResult()
            errors: dict[int, str] = {}

            def delivered(row_id: int) -> Any:
                def callback(err: KafkaError | None, _msg: Message) -> None:
                    if err is not None:
                        errors[row_id] = str(err)

                return callback

            for row_id, topic, key, payload, dedup_key in rows:
                producer.produce(
                    topic,
                    value=payload.encode(),
                    key=key.encode(),
                    headers={"dedup_key": dedup_key.encode()},
                    on_delivery=delivered(row_id),
                )
                producer.poll(0)
            remaining = producer.flush(timeout_s)
            ok_ids = [r[0] for r in rows if r[0] not in errors]
            if remaining:
                # Not confirmed in time: treat everything of this round as unconfirmed.
                errors.update({r[0]: "delivery not confirmed within timeout" for r in rows})
                ok_ids = []
            cur.execute(
                f"UPDATE {PLATFORM.outbox_table} SET published_at = now(), attempts = attempts + 1 WHERE id = ANY(%s)",
                (ok_ids,),
            )
            for row_id, message in errors.items():
                cur.execute(
                    f"UPDATE {PLATFORM.outbox_table} SET attempts = attempts + 1, last_error = %s WHERE id = %s",
                    (message, row_id),
                )
            if errors:
                log.error(
                    "outbox: %s of %s messages failed, e.g. %s", len(errors), len(rows), next(iter(errors.values()))
                )
        return PublishResult(published=len(ok_ids), failed=len(errors))

    def close(self) -> None:
        """Flush and drop the producer (its threads end with it, even if this object lives on)."""
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None
