"""The app_logs streaming job.

    spark-submit spark_jobs/app_logs/job.py [--available-now] [--no-es] ...
    python -m spark_jobs.app_logs.job --help

One streaming query, `logs`, reads the `app_logs` topic. Each micro-batch: parse access logs
(Apache/Nginx combined) and JSON API logs; lines neither format explains, or with invalid
fields, to `dead_letters` (with the line) and, through the outbox, to the dead-letter topic;
the rest normalised (path template, status class, latency in ms) and enriched (browser, OS and
device from the user agent; hour of day and weekday), stored in the raw table and indexed into
Elasticsearch's daily indices with the source position as `_id`. Then the per-minute statistics
of every minute the batch touched are recomputed from the raw table (see `minute_stats.py`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from spark_jobs import streaming_job
from spark_jobs.app_logs import transforms as T
from spark_jobs.app_logs.minute_stats import minute_stats_params, minute_stats_statement
from spark_jobs.app_logs.user_agents import enrich_user_agents
from spark_jobs.sinks.copy_lines import copy_line
from spark_jobs.sinks.elasticsearch import bulk_line
from spark_jobs.sinks.outbox import OUTBOX
from spark_jobs.sinks.partition_writer import RESULT_DDL, RawBatchWrite, merge_results
from spark_jobs.streaming_job import JobOptions, StreamingJob
from tributary.catalog import APP_LOGS, PLATFORM, Index, Pipeline, PlatformNames
from tributary.settings import Settings

log = logging.getLogger("tributary.app_logs")

QUERY = "logs"
# Document fields besides the raw columns' own names (the index calls the event time `timestamp`).
_DOCUMENT_RENAMES = {"event_ts": "timestamp"}
_NOT_INDEXED = ("kafka_timestamp",)


def log_document(index: Index) -> Column:
    """The bulk `create` of a parsed line's document, id `<topic>-<partition>-<offset>`, in its day's index."""
    fields = [F.col(c).alias(_DOCUMENT_RENAMES.get(c, c)) for c in T.RAW_COLUMNS if c not in _NOT_INDEXED]
    doc_id = F.concat_ws("-", "topic", "kafka_partition", "kafka_offset")
    return bulk_line(index, doc_id, F.col("event_ts"), fields)


class AppLogsJob(StreamingJob):
    """Parses, normalises and enriches log lines; raw table, daily indices, per-minute statistics."""

    def __init__(
        self,
        spark: SparkSession,
        settings: Settings,
        options: JobOptions | None = None,
        pipeline: Pipeline = APP_LOGS,
        platform: PlatformNames = PLATFORM,
    ) -> None:
        if pipeline.tables.summary is None or len(pipeline.windows) != 1 or "logs" not in pipeline.indices:
            raise ValueError(f"pipeline {pipeline.name} lacks the minute-stats table, its one window or its index")
        super().__init__(spark, settings, options, pipeline, platform)
        self.window = pipeline.windows[0]
        self.raw = self.raw_target(T.RAW_COLUMNS)
        self.stats_table = pipeline.tables.summary
        self.index = pipeline.indices["logs"]

    def query_builders(self) -> dict[str, Callable[[], StreamingQuery]]:
        return {QUERY: lambda: self.writer(self.read(), QUERY, "append", self.write_batch)}

    def write_batch(self, df: DataFrame, batch_id: int) -> None:
        label = f"{self.name}.{QUERY} batch {batch_id}"
        staged = self.with_dead_letter_columns(enrich_user_agents(T.parse_log_lines(df, self.pipeline)))
        good = [F.struct(F.lit("raw").alias("kind"), copy_line(staged.schema, self.raw.columns).alias("line"))]
        if self.es is not None:
            good.append(F.struct(F.lit("es").alias("kind"), log_document(self.index).alias("line")))
        lines = self.split_lines(staged, good, self.dead_letter_lines(staged))
        write = RawBatchWrite(
            self.settings,
            label,
            self.raw,
            self.dead,
            OUTBOX,
            self.es is not None,
            touched_window_s=self.window.duration_s,
        )
        result = merge_results([row.asDict() for row in lines.mapInArrow(write, RESULT_DDL).collect()])
        # After every partition committed its rows, so each minute is computed from all of them.
        touched: list[int] = result["touched"]
        if touched:
            with self.pg.batch(label) as batch:
                batch.execute(
                    minute_stats_statement(self.raw.table, self.stats_table),
                    minute_stats_params(touched, self.window.duration_s),
                )
        self.record_batch_counts(QUERY, batch_id, result)
        published = self.outbox.publish_pending()
        log.info(
            "%s: %s valid (%s new), %s minutes, %s dead letters %s, es created %s (already there %s), published %s",
            label,
            result["valid"],
            result["raw_new"],
            len(touched),
            result["dead"],
            result["violations"],
            result["es_created"],
            result["es_present"],
            published.published,
        )


def main(argv: list[str] | None = None) -> int:
    return streaming_job.main(APP_LOGS, AppLogsJob, __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    sys.exit(main())
