"""Shared by the Kafka source tests: one availableNow query run to its end."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQuery

from spark_jobs.sources.kafka import read_kafka_stream

QUERY_TIMEOUT_S = 120


def run_available_now(
    spark: SparkSession, options: Mapping[str, str], checkpoint: Path, sink: Path | None = None
) -> StreamingQuery:
    """Run one availableNow query to its end; into Parquet at `sink`, or `noop` without one."""
    writer = read_kafka_stream(spark, options, use_native=False).writeStream.trigger(availableNow=True)
    writer = writer.option("checkpointLocation", str(checkpoint))
    query = writer.format("parquet").option("path", str(sink)).start() if sink else writer.format("noop").start()
    try:
        finished = query.awaitTermination(QUERY_TIMEOUT_S)
    finally:
        if query.isActive:
            query.stop()
    assert finished, f"availableNow query did not finish within {QUERY_TIMEOUT_S} s"
    return query
