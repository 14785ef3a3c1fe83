"""What the user_events pipeline writes, built as columns inside Spark: one place for both jobs.

The streaming job and the backfill job both build their COPY lines, outbox messages and
Elasticsearch documents with these functions, so a backfill writes byte for byte what streaming
wrote: the same summary and anomaly rows, the same alert dedup keys (`alert:<user>:<unix window
start>:<seconds>`) and the same deterministic document ids.

    windows = T.activity_windows(events, USER_EVENTS.anomaly.window, actions)
    lines = windows.select(summary_line(windows.schema).alias("line"))
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from spark_jobs.sinks.copy_lines import copy_line, csv_line
from spark_jobs.sinks.elasticsearch import bulk_line
from spark_jobs.user_events.transforms import EVENT_COLUMNS
from tributary.catalog import Index

# A window row (summary or anomaly) is keyed by user and window.
WINDOW_KEY = ("user_id", "window_start", "window_seconds")
SUMMARY_COLUMNS = (
    *WINDOW_KEY,
    "event_count",
    "distinct_products",
    "action_counts",
    "first_event_ts",
    "last_event_ts",
)
ANOMALY_COLUMNS = (
    *WINDOW_KEY,
    "event_count",
    "zscore",
    "rule",
    "severity",
    "user_name",
    "region",
)
# The events index maps every raw column but the broker timestamp (its template is strict).
ES_EVENT_FIELDS = tuple(c for c in EVENT_COLUMNS if c != "kafka_timestamp")
# The columns of the outbox table an alert line fills, in the order of `alert_line`.
OUTBOX_COLUMNS = ("dedup_key", "topic", "message_key", "payload")


def summary_line(schema: StructType) -> Column:
    """The COPY line of a summary row, for `activity_windows` rows of `schema`."""
    return copy_line(schema, SUMMARY_COLUMNS)


def anomaly_line(schema: StructType) -> Column:
    """The COPY line of an anomaly row, for `score_anomalies` rows (enriched) of `schema`."""
    return copy_line(schema, ANOMALY_COLUMNS)


def anomaly_key() -> Column:
    """`<user>:<unix window start>:<window seconds>`: the anomaly's document id and alert key."""
    return F.concat_ws(":", F.col("user_id"), F.unix_timestamp("window_start"), F.col("window_seconds"))


def alert_dedup_key() -> Column:
    """The outbox `dedup_key` of an anomaly's alert: one alert per (user, window), ever."""
    return F.concat(F.lit("alert:"), anomaly_key())


def alert_message(pipeline_name: str) -> Column:
    """The JSON payload of an anomaly's alert on the alerts topic."""
    return F.to_json(F.struct(F.lit("anomaly").alias("type"), F.lit(pipeline_name).alias("pipeline"), *ANOMALY_COLUMNS))


def alert_fields(pipeline_name: str, alerts_topic: str) -> list[Column]:
    """The outbox columns (`OUTBOX_COLUMNS`) of an anomaly's alert, keyed by user."""
    return [alert_dedup_key(), F.lit(alerts_topic), F.col("user_id").cast("string"), alert_message(pipeline_name)]


def alert_line(pipeline_name: str, alerts_topic: str) -> Column:
    """The outbox COPY line (`OUTBOX_COLUMNS`) of an anomaly's alert."""
    return csv_line(*alert_fields(pipeline_name, alerts_topic))


def anomaly_document(index: Index) -> Column:
    """The bulk `create` of an anomaly's document, id `anomaly_key()`, in the daily index."""
    return bulk_line(
        index, anomaly_key(), F.col("window_start"), [*ANOMALY_COLUMNS, F.current_timestamp().alias("detected_at")]
    )


def event_document_id() -> Column:
    """`<topic>-<partition>-<offset>`: a raw event's document id (its source position)."""
    return F.concat_ws("-", "topic", "kafka_partition", "kafka_offset")


def event_document(index: Index) -> Column:
    """The bulk `create` of a valid event's document, into the daily index of its event time."""
    return bulk_line(
        index, event_document_id(), F.col("event_ts"), [*ES_EVENT_FIELDS, F.current_timestamp().alias("ingested_at")]
    )


def anomaly_lines(
    anomalies: DataFrame, pipeline_name: str, alerts_topic: str, anomalies_index: Index | None
) -> list[Column]:
    """(kind, line) structs of each anomaly: its row, its alert and (with an index) its document.

    Use with `F.inline(F.array(*anomaly_lines(...)))`: kinds `anomaly`, `alert` and `es`.
    """
    lines = [
        F.struct(F.lit("anomaly").alias("kind"), anomaly_line(anomalies.schema).alias("line")),
        F.struct(F.lit("alert").alias("kind"), alert_line(pipeline_name, alerts_topic).alias("line")),
    ]
    if anomalies_index is not None:
        lines.append(F.struct(F.lit("es").alias("kind"), anomaly_document(anomalies_index).alias("line")))
    return lines
