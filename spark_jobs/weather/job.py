"""The weather streaming job.

    spark-submit spark_jobs/weather/job.py [--available-now] ...
    python -m spark_jobs.weather.job --help

One streaming query, `readings`, reads the `weather_data` topic. Each micro-batch: parse and
validate; invalid readings to `dead_letters` and, through the outbox, to the dead-letter topic;
valid ones to the raw table; readings behind the watermark (the newest event time seen by earlier
batches minus the catalog's 10 minutes) to the late-readings table, counted in the heartbeat;
the rest added to the hourly summary per station and over all stations (see `merge.py`).

Spark's own event-time aggregation would drop late readings without a trace; keeping the
watermark in Postgres and the hourly sums in the summary table keeps every reading accounted for,
and the per-position raw insert makes a replayed batch add nothing twice.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from datetime import datetime, timedelta

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from spark_jobs import streaming_job
from spark_jobs.sinks.copy_lines import copy_line
from spark_jobs.sinks.outbox import OUTBOX
from spark_jobs.sinks.partition_writer import RESULT_DDL, merge_results
from spark_jobs.streaming_job import JobOptions, StreamingJob
from spark_jobs.weather import transforms as T
from spark_jobs.weather.merge import WeatherBatchWrite
from tributary.catalog import PLATFORM, WEATHER, Pipeline, PlatformNames
from tributary.settings import Settings

log = logging.getLogger("tributary.weather")

QUERY = "readings"


class WeatherJob(StreamingJob):
    """Validates readings, stores them, keeps late ones aside and adds the rest to hourly summaries."""

    def __init__(
        self,
        spark: SparkSession,
        settings: Settings,
        options: JobOptions | None = None,
        pipeline: Pipeline = WEATHER,
        platform: PlatformNames = PLATFORM,
    ) -> None:
        if pipeline.tables.summary is None or pipeline.tables.late is None or len(pipeline.windows) != 1:
            raise ValueError(f"pipeline {pipeline.name} lacks the summary, late table or its one window")
        super().__init__(spark, settings, options, pipeline, platform)
        self.window = pipeline.windows[0]
        self.raw = self.raw_target(T.READING_COLUMNS)
        self.summary_table = pipeline.tables.summary
        self.late_table = pipeline.tables.late

    def query_builders(self) -> dict[str, Callable[[], StreamingQuery]]:
        return {QUERY: lambda: self.writer(self.read(), QUERY, "append", self.write_batch)}

    def watermark(self, batch_id: int | None = None) -> datetime | None:
        """Readings older than this are late: the newest event time of earlier batches minus the lateness."""
        newest = self.stored_max_event_ts(QUERY, batch_id)
        return None if newest is None else newest - timedelta(seconds=self.window.watermark_s)

    def write_batch(self, df: DataFrame, batch_id: int) -> None:
        label = f"{self.name}.{QUERY} batch {batch_id}"
        watermark = self.watermark(batch_id)
        staged = self.with_dead_letter_columns(T.parse_readings(df, self.pipeline))
        good = [F.struct(F.lit("raw").alias("kind"), copy_line(staged.schema, self.raw.columns).alias("line"))]
        lines = self.split_lines(staged, good, self.dead_letter_lines(staged))
        write = WeatherBatchWrite(
            self.settings,
            label,
            self.raw,
            self.dead,
            OUTBOX,
            es_enabled=False,
            summary_table=self.summary_table,
            late_table=self.late_table,
            window_seconds=self.window.duration_s,
            watermark=watermark,
        )
        result = merge_results([row.asDict() for row in lines.mapInArrow(write, RESULT_DDL).collect()])
        # After the rows are committed; a replay of this batch (same id) still reads the watermark above.
        self.advance_max_event_ts(QUERY, result["max_event_us"], batch_id)
        self.record_batch_counts(QUERY, batch_id, result, watermark)
        published = self.outbox.publish_pending()
        log.info(
            "%s: %s valid (%s new, %s late, watermark %s), %s dead letters %s, published %s",
            label,
            result["valid"],
            result["raw_new"],
            result["late"],
            watermark,
            result["dead"],
            result["violations"],
            published.published,
        )


def main(argv: list[str] | None = None) -> int:
    return streaming_job.main(WEATHER, WeatherJob, __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    sys.exit(main())
