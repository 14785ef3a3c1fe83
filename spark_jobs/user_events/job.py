"""The user_events streaming job.

    spark-submit spark_jobs/user_events/job.py [--available-now] [--no-es] ...
    python -m spark_jobs.user_events.job --help

Three streaming queries read the `user_events` topic, each with its own checkpoint:

- `raw`: parse and validate; valid events to the raw table (+ Elasticsearch), invalid ones to
  `dead_letters` and, through the outbox, to the dead-letter topic; violation counts per batch.
- `windows_5s`: 5 s tumbling per-user activity (update mode: rows are upserted as they change).
- `windows_60s`: 1 min windows sliding by 5 s (append mode: emitted once closed by the
  watermark), upserted into the summary, scored for anomalies; anomalies go to their table,
  to Elasticsearch and, through the outbox, to the alerts topic, exactly once per (user, window).

Every sink is idempotent, so a batch replayed after a crash lands nothing twice. A sink error
fails the query loudly (the supervisor restarts the job); bad records never do.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from spark_jobs import streaming_job
from spark_jobs.sinks.copy_lines import copy_line, copy_payload
from spark_jobs.sinks.outbox import OUTBOX
from spark_jobs.sinks.partition_writer import RESULT_DDL, RawBatchWrite, merge_results
from spark_jobs.sinks.postgres import MergeTarget
from spark_jobs.streaming_job import JobOptions, StreamingJob
from spark_jobs.user_events import transforms as T
from spark_jobs.user_events.writers import (
    ANOMALY_COLUMNS,
    SUMMARY_COLUMNS,
    WINDOW_KEY,
    anomaly_lines,
    event_document,
    summary_line,
)
from tributary.catalog import PLATFORM, USER_EVENTS, Pipeline, PlatformNames, Window
from tributary.clients import jdbc_url
from tributary.settings import Settings

log = logging.getLogger("tributary.user_events")

__all__ = ["SUMMARY_COLUMNS", "JobOptions", "UserEventsJob", "main"]


class UsersLookup:
    """The users table as a cached DataFrame, reloaded when older than `refresh_s`."""

    def __init__(self, spark: SparkSession, pg_url: str, table: str, refresh_s: int) -> None:
        self._spark = spark
        self._url, self._properties = jdbc_url(pg_url)
        self._table = table
        self._refresh_s = refresh_s
        self._df: DataFrame | None = None
        self._loaded_at = 0.0

    def current(self) -> DataFrame:
        if self._df is None or time.monotonic() - self._loaded_at > self._refresh_s:
            fresh = (
                self._spark.read.jdbc(self._url, self._table, properties=self._properties)
                .select("user_id", "name", "region")
                .cache()
            )
            log.info("users lookup reloaded: %s users", fresh.count())
            if self._df is not None:
                self._df.unpersist()
            self._df, self._loaded_at = fresh, time.monotonic()
        return self._df


class UserEventsJob(StreamingJob):
    """Builds and runs the three queries of one pipeline instance."""

    def __init__(
        self,
        spark: SparkSession,
        settings: Settings,
        options: JobOptions | None = None,
        pipeline: Pipeline = USER_EVENTS,
        platform: PlatformNames = PLATFORM,
    ) -> None:
        if pipeline.anomaly is None or pipeline.tables.summary is None or pipeline.tables.anomalies is None:
            raise ValueError(f"pipeline {pipeline.name} lacks the summary/anomaly entries this job needs")
        super().__init__(spark, settings, options, pipeline, platform)
        self.rules = pipeline.anomaly
        self.actions: tuple[str, ...] = pipeline.validation.allowed_actions  # type: ignore[union-attr]
        self.events_index = pipeline.indices["events"]
        self.anomalies_index = pipeline.indices["anomalies"]
        self.raw = self.raw_target(T.EVENT_COLUMNS)
        self.summary = MergeTarget(pipeline.tables.summary, SUMMARY_COLUMNS, key=WINDOW_KEY, update=True)
        self.anomalies = MergeTarget(pipeline.tables.anomalies, ANOMALY_COLUMNS, key=WINDOW_KEY)
        self.users = UsersLookup(
            spark, settings.pg_url, pipeline.tables.lookup or "users", self.options.users_refresh_s
        )

    # ---------------------------------------------------------------- queries
    def query_builders(self) -> dict[str, Callable[[], StreamingQuery]]:
        short, sliding = self._windows()

        def valid() -> DataFrame:
            return T.valid_events(T.parse_user_events(self.read(), self.pipeline))

        return {
            "raw": lambda: self.writer(self.read(), "raw", "append", self.write_raw_batch),
            "windows_5s": lambda: self.writer(
                T.activity_windows(valid(), short, self.actions), "windows_5s", "update", self.write_short_windows
            ),
            "windows_60s": lambda: self.writer(
                T.activity_windows(valid(), sliding, self.actions), "windows_60s", "append", self.write_closed_windows
            ),
        }

    def _windows(self) -> tuple[Window, Window]:
        sliding = self.rules.window
        others = [w for w in self.pipeline.windows if w != sliding]
        if len(others) != 1:
            raise ValueError(f"{self.name}: expected one window besides the anomaly window, got {others}")
        return others[0], sliding

    # ---------------------------------------------------------------- batches
    def write_raw_batch(self, df: DataFrame, batch_id: int) -> None:
        label = f"{self.name}.raw batch {batch_id}"
        staged = self.with_dead_letter_columns(T.parse_user_events(df, self.pipeline))
        good = [F.struct(F.lit("raw").alias("kind"), copy_line(staged.schema, self.raw.columns).alias("line"))]
        if self.es is not None:
            good.append(F.struct(F.lit("es").alias("kind"), event_document(self.events_index).alias("line")))
        lines = self.split_lines(staged, good, self.dead_letter_lines(staged))
        write = RawBatchWrite(self.settings, label, self.raw, self.dead, OUTBOX, self.es is not None)
        result = merge_results([row.asDict() for row in lines.mapInArrow(write, RESULT_DDL).collect()])
        self.record_batch_counts("raw", batch_id, result)
        published = self.outbox.publish_pending()
        log.info(
            "%s: %s valid (%s new), %s dead letters %s, es created %s (already there %s), published %s",
            label,
            result["valid"],
            result["raw_new"],
            result["dead"],
            result["violations"],
            result["es_created"],
            result["es_present"],
            published.published,
        )

    def write_short_windows(self, df: DataFrame, batch_id: int) -> None:
        label = f"{self.name}.windows_5s batch {batch_id}"
        lines = df.select(copy_line(df.schema, self.summary.columns).alias("line")).toArrow()
        with self.pg.batch(label) as batch:
            batch.merge(self.summary, copy_payload(lines.column("line")))
        log.info("%s: %s window rows upserted", label, lines.num_rows)

    def write_closed_windows(self, df: DataFrame, batch_id: int) -> None:
        label = f"{self.name}.windows_60s batch {batch_id}"
        windows = df.persist()
        try:
            anomalies = T.score_anomalies(T.enrich_with_users(windows, self.users.current()), self.rules)
            lines = windows.select(
                F.lit("summary").alias("kind"), summary_line(windows.schema).alias("line")
            ).unionByName(anomalies.select(F.inline(F.array(*self._anomaly_lines(anomalies)))))
            table = lines.toArrow()
        finally:
            windows.unpersist()
        kinds = table.column("kind")
        found = table.filter(pc.equal(kinds, "anomaly"))
        summary = table.filter(pc.equal(kinds, "summary"))
        with self.pg.batch(label) as batch:
            batch.merge(self.summary, copy_payload(summary.column("line")))
            batch.merge(self.anomalies, copy_payload(found.column("line")))
            batch.merge(OUTBOX, copy_payload(table.filter(pc.equal(kinds, "alert")).column("line")))
        if self.es is not None:
            self.es.write(label, table.filter(pc.equal(kinds, "es")).column("line"))
        self.outbox.publish_pending()
        log.info(
            "%s: %s closed windows, %s anomalies (%s new)",
            label,
            summary.num_rows,
            found.num_rows,
            batch.counts.get(self.anomalies.table, 0),
        )

    def _anomaly_lines(self, anomalies: DataFrame) -> list[Column]:
        index = self.anomalies_index if self.es is not None else None
        return anomaly_lines(anomalies, self.name, self.platform.alerts_topic.name, index)


def main(argv: list[str] | None = None) -> int:
    return streaming_job.main(USER_EVENTS, UserEventsJob, __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    sys.exit(main())
