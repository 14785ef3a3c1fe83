"""Read a time range of a pipeline's raw table into Spark, in parallel over its day partitions.

Spark's JDBC reader gets one predicate per hour of the range: each task reads one slice, which
PostgreSQL prunes to a single day partition from the `event_ts` bounds, and the read spreads over
all cores.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from pyspark.sql import DataFrame, SparkSession

from tributary.catalog import Pipeline
from tributary.clients import jdbc_url
from tributary.settings import Settings

# Rows per JDBC round trip (the driver's default of 0 would fetch a whole slice at once).
FETCH_SIZE = "10000"


def hour_slices(start: datetime, end: datetime, hours_per_slice: int = 1) -> list[tuple[datetime, datetime]]:
    """[start, end) cut at whole hours (UTC) into slices of `hours_per_slice` hours."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware (UTC)")
    if end <= start:
        raise ValueError(f"empty range: end {end.isoformat()} is not after start {start.isoformat()}")
    step = timedelta(hours=hours_per_slice)
    slices, low = [], start.astimezone(UTC)
    boundary = low.replace(minute=0, second=0, microsecond=0) + step
    while low < end:
        high = min(boundary, end)
        slices.append((low, high))
        low, boundary = high, boundary + step
    return slices


def time_predicates(column: str, start: datetime, end: datetime, hours_per_slice: int = 1) -> list[str]:
    """SQL predicates, one per slice of [start, end), that together select each row exactly once."""
    return [
        f"{column} >= '{low.isoformat()}'::timestamptz AND {column} < '{high.isoformat()}'::timestamptz"
        for low, high in hour_slices(start, end, hours_per_slice)
    ]


def read_raw_range(
    spark: SparkSession,
    settings: Settings,
    pipeline: Pipeline,
    start: datetime,
    end: datetime,
    columns: Sequence[str] | None = None,
    hours_per_slice: int = 1,
) -> DataFrame:
    """Rows of `pipeline.tables.raw` with `event_ts` in [start, end), one Spark partition per slice."""
    url, properties = jdbc_url(settings.pg_url)
    df = spark.read.jdbc(
        url,
        pipeline.tables.raw,
        predicates=time_predicates("event_ts", start, end, hours_per_slice),
        properties={**properties, "fetchsize": FETCH_SIZE},
    )
    return df.select(*columns) if columns else df
