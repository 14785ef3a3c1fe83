"""COPY lines, dead letters and bulk documents built from Arrow tables in a Python worker.

The counterpart of `copy_lines` (which formats inside the JVM) for writers that already hold
their rows as Arrow: pyarrow's C++ CSV writer produces PostgreSQL `COPY ... (FORMAT csv)` input
directly (strings always quoted, so "" is an empty string and an unquoted empty field is NULL;
timestamps as `YYYY-MM-DD HH:MM:SS.ffffffZ`).

The dead-letter row and its outbox message match `StreamingJob.dead_letter_lines` field for
field, so a dead letter reads the same whichever writer stored it.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from tributary.catalog import Index

_WRITE_OPTIONS = pa_csv.WriteOptions(include_header=False, quoting_style="needed")
_ENCODER = msgspec.json.Encoder()


def csv_payload(table: pa.Table, columns: Sequence[str]) -> bytes:
    """COPY (FORMAT csv) input of `table[columns]`: one line per row."""
    if table.num_rows == 0:
        return b""
    selected = table.select(list(columns))
    buffer = io.BytesIO()
    pa_csv.write_csv(
        pa.Table.from_arrays([_csv_ready(c) for c in selected.columns], names=selected.column_names),
        buffer,
        _WRITE_OPTIONS,
    )
    return buffer.getvalue()


def _csv_ready(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A zoned timestamp column as UTC text (`2026-11-23 10:00:00.000000Z`); other columns as they are.

    The CSV writer formats zoned timestamps at ~1 us a value, a cast of the UTC wall time to
    text takes a few dozen nanoseconds: over a million rows a second, that is a core's share.
    """
    kind = column.type
    if not (pa.types.is_timestamp(kind) and kind.tz is not None):
        return column
    wall = pc.cast(column, pa.timestamp(kind.unit))
    return pc.binary_join_element_wise(pc.cast(wall, pa.string()), "Z", "")


def array_literal(values: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """A list column as PostgreSQL array literals (`{1,2,3}`); only for numbers and plain identifiers."""
    joined = pc.binary_join(pc.cast(values, pa.list_(pa.string())), ",")
    return pc.binary_join_element_wise("{", joined, "}", "")


def iso_millis(epoch_us: int) -> str:
    """A UTC timestamp as Spark's JSON writes it (`2026-11-23T10:00:00.000Z`)."""
    seconds, micros = divmod(epoch_us, 1_000_000)
    whole = _iso_seconds(seconds)
    return f"{whole}.{micros // 1000:03d}Z"


def _iso_seconds(seconds: int) -> str:
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{_civil_date(days)}T{hours:02d}:{minutes:02d}:{secs:02d}"


def _civil_date(days: int) -> str:
    """The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's civil_from_days)."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    return f"{year:04d}-{month:02d}-{day:02d}"


def dead_letter_payloads(
    invalid: pa.Table, *, pipeline: str, dead_letter_topic: str, dlq_payload_bytes: int
) -> tuple[bytes, bytes]:
    """(dead_letters COPY input, outbox COPY input) of the invalid rows of a parsed table.

    `invalid` has topic, kafka_partition, kafka_offset, kafka_timestamp, payload and violations.
    The outbox message carries the position, the failed rules and the payload (base64, at most
    `dlq_payload_bytes`) and is keyed by position, so a replay enqueues nothing twice.
    """
    if invalid.num_rows == 0:
        return b"", b""
    topics = invalid.column("topic").to_pylist()
    partitions = invalid.column("kafka_partition").to_pylist()
    offsets = invalid.column("kafka_offset").to_pylist()
    broker_us = pc.cast(invalid.column("kafka_timestamp"), pa.int64()).to_pylist()
    payloads = invalid.column("payload").to_pylist()
    reasons = invalid.column("violations").to_pylist()
    hex_payloads, positions, messages = [], [], []
    for topic, partition, offset, ts, payload, failed in zip(
        topics, partitions, offsets, broker_us, payloads, reasons, strict=True
    ):
        hex_payloads.append(None if payload is None else "\\x" + payload.hex())
        position = f"{topic}:{partition}:{offset}"
        positions.append(position)
        message: dict[str, Any] = {
            "pipeline": pipeline,
            "topic": topic,
            "kafka_partition": partition,
            "kafka_offset": offset,
            "kafka_timestamp": None if ts is None else iso_millis(ts),
            "reasons": failed,
        }
        if payload is not None:
            message["payload_base64"] = base64.b64encode(payload[:dlq_payload_bytes]).decode()
            message["payload_bytes"] = len(payload)
        # Spark's to_json leaves null fields out; so does this.
        messages.append(_ENCODER.encode({k: v for k, v in message.items() if v is not None}).decode())
    rows = invalid.num_rows
    dead = pa.table(
        {
            "topic": invalid.column("topic"),
            "kafka_partition": invalid.column("kafka_partition"),
            "kafka_offset": invalid.column("kafka_offset"),
            "pipeline": pa.repeat(pa.scalar(pipeline), rows),
            "kafka_timestamp": invalid.column("kafka_timestamp"),
            "payload": pa.array(hex_payloads, pa.string()),
            "reasons": array_literal(invalid.column("violations")),
        }
    )
    outbox = pa.table(
        {
            "dedup_key": pa.array(["dlq:" + p for p in positions], pa.string()),
            "topic": pa.repeat(pa.scalar(dead_letter_topic), rows),
            "message_key": pa.array(positions, pa.string()),
            "payload": pa.array(messages, pa.string()),
        }
    )
    return csv_payload(dead, dead.column_names), csv_payload(outbox, outbox.column_names)


def bulk_payload(
    table: pa.Table,
    index: Index,
    ids: Sequence[str],
    day_us: Sequence[int],
    fields: Sequence[str],
    extra: dict[str, Any],
) -> list[bytes]:
    """NDJSON `create` action + document per row, into the daily index of `day_us` (epoch us).

    Timestamps are written as Spark's `to_json` writes them (milliseconds, `Z`), nulls left out,
    so the documents equal those the backfill builds in the JVM.
    """
    timestamp_fields = {name for name in fields if pa.types.is_timestamp(table.schema.field(name).type)}
    columns = {
        name: (
            pc.cast(table.column(name), pa.int64()).to_pylist()
            if name in timestamp_fields
            else table.column(name).to_pylist()
        )
        for name in fields
    }
    lines = []
    for row, (doc_id, day) in enumerate(zip(ids, day_us, strict=True)):
        doc: dict[str, Any] = {}
        for name in fields:
            value = columns[name][row]
            if value is None:
                continue
            doc[name] = iso_millis(value) if name in timestamp_fields else value
        doc.update(extra)
        action = {
            "create": {"_index": f"{index.base}-{_civil_date(day // 86_400_000_000).replace('-', '.')}", "_id": doc_id}
        }
        lines.append(_ENCODER.encode(action) + b"\n" + _ENCODER.encode(doc) + b"\n")
    return lines
