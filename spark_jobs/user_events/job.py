"""The user_events streaming job.

    spark-submit spark_jobs/user_events/job.py [--available-now] [--no-es] ...
    python -m spark_jobs.user_events.job --help

One streaming query, `events`, reads the `user_events` topic and parses it once per micro-batch:

- valid events to the raw table (+ Elasticsearch); invalid ones to `dead_letters` and, through
  the outbox, to the dead-letter topic; violation counts per batch;
- in the same partition transaction, the new events are added to per-user 5 s activity buckets,
  written to the summary as the 5 s windows (upserted while they change);
- in a background thread on the driver, while the next batch writes, the 1-minute windows
  sliding by 5 s that the watermark closed are summed from their buckets, upserted into the
  summary and scored for anomalies; anomalies go to their table, to Elasticsearch and, through
  the outbox, to the alerts topic, once per (user, window) (`close_pending_windows`).

The watermark (newest event time of earlier batches minus the catalog's lateness) is kept in
PostgreSQL, so a replayed batch decides exactly as its first attempt did (see `merge.py`); so is
the watermark the windows are closed through, so a close lost in a crash is made up. Every
sink is idempotent, so a batch replayed after a crash lands nothing twice. A sink error fails the
query loudly (the supervisor restarts the job); bad records never do.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from spark_jobs import streaming_job
from spark_jobs.background_task import BackgroundTask
from spark_jobs.sinks.copy_lines import copy_payload
from spark_jobs.sinks.outbox import OUTBOX
from spark_jobs.sinks.partition_writer import RESULT_DDL, merge_results
from spark_jobs.sinks.postgres import MergeTarget
from spark_jobs.streaming_job import JobOptions, StreamingJob
from spark_jobs.user_events import transforms as T
from spark_jobs.user_events.merge import (
    UserEventsPartitionWrite,
    close_windows_statement,
    closes_a_window,
    prune_buckets_statement,
)
from spark_jobs.user_events.parse import UserEventParser
from spark_jobs.user_events.writers import (
    ANOMALY_COLUMNS,
    SUMMARY_COLUMNS,
    WINDOW_KEY,
    anomaly_lines,
)
from tributary.catalog import PLATFORM, USER_EVENTS, Pipeline, PlatformNames, Window
from tributary.clients import jdbc_url
from tributary.settings import Settings

log = logging.getLogger("tributary.user_events")

__all__ = ["SUMMARY_COLUMNS", "JobOptions", "UserEventsJob", "main"]

QUERY = "events"
# The watermark the sliding windows are closed through, kept beside the query's own.
CLOSED_MARK = f"{QUERY}.windows"
# Summing a batch's closing windows groups ~12 bucket rows per window with their product arrays:
# in memory it is ~10% faster than spilled to disk, and JIT compiling it costs more than it saves.
CLOSE_SETTINGS = ("SET LOCAL work_mem = '128MB'", "SET LOCAL jit = off")
# How long a stopping job waits for its last window close (a catch-up close takes seconds).
CLOSE_DRAIN_TIMEOUT_S = 600.0
# The closed windows the anomaly scoring reads (`close_windows_statement` returns them).
CLOSED_ARROW = pa.schema(
    [
        ("user_id", pa.int64()),
        ("window_start", pa.timestamp("us", tz="UTC")),
        ("window_seconds", pa.int32()),
        ("event_count", pa.int64()),
    ]
)


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
    """Builds and runs the job's one query for one pipeline instance."""

    def __init__(
        self,
        spark: SparkSession,
        settings: Settings,
        options: JobOptions | None = None,
        pipeline: Pipeline = USER_EVENTS,
        platform: PlatformNames = PLATFORM,
    ) -> None:
        tables = pipeline.tables
        if pipeline.anomaly is None or tables.summary is None or tables.anomalies is None or tables.state is None:
            raise ValueError(f"pipeline {pipeline.name} lacks the summary/anomaly/state entries this job needs")
        super().__init__(spark, settings, options, pipeline, platform)
        self.rules = pipeline.anomaly
        self.short, self.sliding = self._windows()
        self.actions: tuple[str, ...] = pipeline.validation.allowed_actions  # type: ignore[union-attr]
        self.events_index = pipeline.indices["events"]
        self.anomalies_index = pipeline.indices["anomalies"]
        self.raw = self.raw_target(T.EVENT_COLUMNS)
        self.parser = UserEventParser(pipeline)
        self.summary_table = tables.summary
        self.buckets_table = tables.state
        self.anomalies = MergeTarget(tables.anomalies, ANOMALY_COLUMNS, key=WINDOW_KEY)
        self.users = UsersLookup(spark, settings.pg_url, tables.lookup or "users", self.options.users_refresh_s)
        self.closer = BackgroundTask(f"{self.name} window closer", self.close_pending_windows)

    def _windows(self) -> tuple[Window, Window]:
        """(the 5 s tumbling window, the sliding anomaly window summed from its buckets)."""
        sliding = self.rules.window
        others = [w for w in self.pipeline.windows if w != sliding]
        if len(others) != 1 or others[0].slide_s is not None:
            raise ValueError(f"{self.name}: expected one tumbling window besides the anomaly window, got {others}")
        short = others[0]
        if sliding.slide_s != short.duration_s or sliding.duration_s % short.duration_s:
            raise ValueError(
                f"{self.name}: the anomaly window ({sliding.name}) must slide by the tumbling window's "
                f"{short.duration_s}s and span a whole number of them: it is summed from those buckets"
            )
        if sliding.watermark_s < short.watermark_s:
            raise ValueError(
                f"{self.name}: the anomaly window's watermark ({sliding.watermark_s}s) must be at least the "
                f"tumbling window's ({short.watermark_s}s): its buckets must be final when it closes"
            )
        return short, sliding

    # ---------------------------------------------------------------- queries
    def query_builders(self) -> dict[str, Callable[[], StreamingQuery]]:
        return {QUERY: lambda: self.writer(self.read(), QUERY, "append", self.write_batch)}

    # ---------------------------------------------------------------- batches
    def start(self) -> list[StreamingQuery]:
        # Windows a stopped or killed run left unclosed close now, beside the first batch.
        self.closer.request()
        return super().start()

    def write_batch(self, df: DataFrame, batch_id: int) -> None:
        self.closer.check()
        label = f"{self.name}.{QUERY} batch {batch_id}"
        newest_before = self.stored_max_event_ts(QUERY, batch_id)
        watermark = _minus(newest_before, self.short.watermark_s)
        write = UserEventsPartitionWrite(
            self.settings,
            label,
            self.parser,
            self.raw,
            self.dead,
            OUTBOX,
            pipeline_name=self.name,
            dead_letter_topic=self.platform.dead_letter_topic.name,
            events_index=self.events_index if self.es is not None else None,
            buckets_table=self.buckets_table,
            summary_table=self.summary_table,
            actions=self.actions,
            bucket_seconds=self.short.duration_s,
            watermark=watermark,
        )
        # Parsing happens in the writer: the records cross from the JVM to Python once.
        records = df.select("value", "topic", "partition", "offset", "timestamp")
        started = time.perf_counter()
        result = merge_results([row.asDict() for row in records.mapInArrow(write, RESULT_DDL).collect()])
        written = time.perf_counter()
        self.advance_max_event_ts(QUERY, result["max_event_us"], batch_id)
        self.record_batch_counts(QUERY, batch_id, result, watermark)
        published = self.outbox.publish_pending()
        # The windows this batch's events closed are summed and scored while the next batch writes.
        self.closer.request()
        log.info(
            "%s: %s valid (%s new, %s late, watermark %s), %s dead letters %s, es created %s (already there %s), "
            "published %s; rows written in %.1fs",
            label,
            result["valid"],
            result["raw_new"],
            result["late"],
            watermark,
            result["dead"],
            result["violations"],
            result["es_created"],
            result["es_present"],
            published.published,
            written - started,
        )

    def drain(self) -> None:
        # Bounded, so a close stuck on a lock cannot keep a stopping driver alive for ever; what
        # it left open the next start closes.
        self.closer.drain(timeout_s=CLOSE_DRAIN_TIMEOUT_S)

    def close_pending_windows(self) -> int:
        """Closes the sliding windows the watermark passed since the last close; returns the anomalies.

        A window whose end is behind the watermark (the newest event time stored minus the
        window's lateness) only sums buckets that no later event can change (they are behind the
        5 s windows' watermark too), so it may close any time after the batch that passed it,
        in the background, and a close lost in a crash is done by the next one: each close covers
        what lies between the stored closed-through mark and the watermark, then moves the mark.
        """
        after = self.stored_max_event_ts(CLOSED_MARK)
        through = _minus(self.stored_max_event_ts(QUERY), self.sliding.watermark_s)
        if through is None or (after is not None and through <= after):
            return 0
        anomalies = self.close_windows(f"{self.name}.{CLOSED_MARK}", after, through)
        self.advance_event_time(CLOSED_MARK, through)
        self.outbox.publish_pending()
        return anomalies

    def close_windows(self, label: str, after: datetime | None, through: datetime) -> int:
        """Closes the sliding windows ending in (after, through]: summary rows, anomalies, alerts.

        Returns the anomalies found. Idempotent: closing the same range again writes nothing new.
        """
        seconds, slide = self.sliding.duration_s, self.short.duration_s
        if not closes_a_window(after, through, seconds, slide):
            return 0
        params = {"after": after, "through": through, "seconds": seconds, "slide": slide}
        started = time.perf_counter()
        with self.pg.batch(f"{label} closing windows") as batch:
            for setting in CLOSE_SETTINGS:
                batch.execute(setting)
            closed = batch.fetch_all(
                close_windows_statement(self.buckets_table, self.summary_table, self.actions),
                params,
                self.summary_table,
            )
            if after is not None:
                batch.execute(prune_buckets_statement(self.buckets_table), params)
        summed = time.perf_counter()
        if not closed:
            return 0
        # Through Arrow: tens of thousands of closed windows per batch are common when catching up.
        columns = zip(*closed, strict=True)
        arrays = [pa.array(values, field.type) for values, field in zip(columns, CLOSED_ARROW, strict=True)]
        windows = self.spark.createDataFrame(pa.Table.from_arrays(arrays, schema=CLOSED_ARROW))
        anomalies = T.score_anomalies(T.enrich_with_users(windows, self.users.current()), self.rules)
        index = self.anomalies_index if self.es is not None else None
        lines = anomalies.select(
            F.inline(F.array(*anomaly_lines(anomalies, self.name, self.platform.alerts_topic.name, index)))
        ).toArrow()
        kinds = lines.column("kind")
        found = lines.filter(pc.equal(kinds, "anomaly"))
        with self.pg.batch(f"{label} anomalies") as batch:
            batch.merge(self.anomalies, copy_payload(found.column("line")))
            batch.merge(OUTBOX, copy_payload(lines.filter(pc.equal(kinds, "alert")).column("line")))
        if self.es is not None:
            self.es.write(label, lines.filter(pc.equal(kinds, "es")).column("line"))
        log.info(
            "%s: %s windows of %ss closed through %s (summed in %.1fs, scored in %.1fs), %s anomalies (%s new)",
            label,
            len(closed),
            seconds,
            through,
            summed - started,
            time.perf_counter() - summed,
            found.num_rows,
            batch.counts.get(self.anomalies.table, 0),
        )
        return found.num_rows


def _minus(moment: datetime | None, seconds: int) -> datetime | None:
    return None if moment is None else moment - timedelta(seconds=seconds)


def main(argv: list[str] | None = None) -> int:
    return streaming_job.main(USER_EVENTS, UserEventsJob, __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    sys.exit(main())
