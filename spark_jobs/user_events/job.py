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

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import FrameType

import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from spark_jobs.heartbeats import UPSERT_VIOLATIONS, HeartbeatListener, wait_until_reported
from spark_jobs.session import build_session
from spark_jobs.sinks.copy_lines import copy_line, copy_payload, csv_line
from spark_jobs.sinks.elasticsearch import ElasticsearchSink
from spark_jobs.sinks.outbox import OUTBOX, OutboxPublisher
from spark_jobs.sinks.partition_writer import DAY, RESULT_DDL, VIOLATIONS, RawBatchWrite, merge_results
from spark_jobs.sinks.postgres import MergeTarget, PostgresSink
from spark_jobs.sources.kafka import read_kafka_stream
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
from tributary.clients import es_client, jdbc_url, kafka_config, pg_connect
from tributary.registry import JobRegistry
from tributary.settings import Settings, load_settings

log = logging.getLogger("tributary.user_events")

DLQ_PAYLOAD_BYTES = 65_536
RAW_KEY = ("topic", "kafka_partition", "kafka_offset", "event_ts")
DEAD_COLUMNS = ("topic", "kafka_partition", "kafka_offset", "pipeline", "kafka_timestamp", "payload", "reasons")


@dataclass(frozen=True)
class JobOptions:
    """How to run the job; defaults come from the catalog entry."""

    starting_offsets: str = "earliest"
    max_offsets_per_trigger: int = USER_EVENTS.max_offsets_per_trigger
    trigger_interval_s: int = USER_EVENTS.trigger_interval_s
    available_now: bool = False
    es_enabled: bool = True
    native_kafka: bool = False
    max_records_per_task: int = 25_000
    users_refresh_s: int = 60
    desired_state_poll_s: float = 5.0
    # Which of the job's queries to run (all in production; a subset for diagnosis).
    queries: tuple[str, ...] = ("raw", "windows_5s", "windows_60s")


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


class UserEventsJob:
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
        self.spark = spark
        self.settings = settings
        self.options = options or JobOptions()
        self.pipeline = pipeline
        self.platform = platform
        self.name = pipeline.job_name
        self.rules = pipeline.anomaly
        self.actions: tuple[str, ...] = pipeline.validation.allowed_actions  # type: ignore[union-attr]
        self.events_index = pipeline.indices["events"]
        self.anomalies_index = pipeline.indices["anomalies"]
        self.raw = MergeTarget(pipeline.tables.raw, T.EVENT_COLUMNS, key=RAW_KEY)
        self.dead = MergeTarget(
            platform.dead_letters_table, DEAD_COLUMNS, key=("topic", "kafka_partition", "kafka_offset")
        )
        self.summary = MergeTarget(pipeline.tables.summary, SUMMARY_COLUMNS, key=WINDOW_KEY, update=True)
        self.anomalies = MergeTarget(pipeline.tables.anomalies, ANOMALY_COLUMNS, key=WINDOW_KEY)
        self.pg = PostgresSink(settings.pg_url, application_name=f"tributary-{self.name}")
        self.es = ElasticsearchSink(es_client(settings)) if self.options.es_enabled else None
        self.outbox = OutboxPublisher(self.pg, kafka_config(settings))
        self.users = UsersLookup(
            spark, settings.pg_url, pipeline.tables.lookup or "users", self.options.users_refresh_s
        )
        self._stop_requested = False

    # ---------------------------------------------------------------- queries
    def read(self) -> DataFrame:
        options = {
            "kafka.bootstrap.servers": self.settings.kafka_bootstrap,
            "subscribe": self.pipeline.topic.name,
            "startingOffsets": self.options.starting_offsets,
            "maxOffsetsPerTrigger": str(self.options.max_offsets_per_trigger),
            "failOnDataLoss": "true",
            # Several tasks per partition and batch keep both cores busy in local mode.
            "maxRecordsPerPartition": str(self.options.max_records_per_task),
        }
        return read_kafka_stream(self.spark, options, use_native=self.options.native_kafka)

    def _writer(self, df: DataFrame, query: str, mode: str, batch: Callable[[DataFrame, int], None]) -> StreamingQuery:
        writer = (
            df.writeStream.queryName(f"{self.name}.{query}")
            .outputMode(mode)
            .option("checkpointLocation", f"{self.pipeline.checkpoint_location(self.settings.checkpoint_root)}/{query}")
            .foreachBatch(batch)
        )
        if self.options.available_now:
            writer = writer.trigger(availableNow=True)
        else:
            writer = writer.trigger(processingTime=f"{self.options.trigger_interval_s} seconds")
        return writer.start()

    def start(self) -> list[StreamingQuery]:
        short, sliding = self._windows()

        def valid() -> DataFrame:
            return T.valid_events(T.parse_user_events(self.read(), self.pipeline))

        builders = {
            "raw": lambda: self._writer(self.read(), "raw", "append", self.write_raw_batch),
            "windows_5s": lambda: self._writer(
                T.activity_windows(valid(), short, self.actions), "windows_5s", "update", self.write_short_windows
            ),
            "windows_60s": lambda: self._writer(
                T.activity_windows(valid(), sliding, self.actions), "windows_60s", "append", self.write_closed_windows
            ),
        }
        unknown = set(self.options.queries) - set(builders)
        if unknown:
            raise ValueError(f"{self.name}: unknown queries {sorted(unknown)}; known: {sorted(builders)}")
        return [builders[name]() for name in self.options.queries]

    def _windows(self) -> tuple[Window, Window]:
        sliding = self.rules.window
        others = [w for w in self.pipeline.windows if w != sliding]
        if len(others) != 1:
            raise ValueError(f"{self.name}: expected one window besides the anomaly window, got {others}")
        return others[0], sliding

    # ---------------------------------------------------------------- batches
    def write_raw_batch(self, df: DataFrame, batch_id: int) -> None:
        label = f"{self.name}.raw batch {batch_id}"
        staged = T.parse_user_events(df, self.pipeline).select(
            "*",
            F.lit(self.name).alias("pipeline"),
            F.col("violations").alias("reasons"),
            F.concat_ws(":", "topic", "kafka_partition", "kafka_offset").alias("position"),
        )
        valid = F.size("violations") == 0
        dead_letter_message = F.to_json(
            F.struct(
                "pipeline",
                "topic",
                "kafka_partition",
                "kafka_offset",
                "kafka_timestamp",
                "reasons",
                # The table keeps the whole payload; the message carries at most its first 64 KiB.
                F.base64(F.substring("payload", 1, DLQ_PAYLOAD_BYTES)).alias("payload_base64"),
                F.length("payload").alias("payload_bytes"),
            )
        )
        outbox = csv_line(
            F.concat(F.lit("dlq:"), F.col("position")),
            F.lit(self.platform.dead_letter_topic.name),
            F.col("position"),
            dead_letter_message,
        )
        good = [F.struct(F.lit("raw").alias("kind"), copy_line(staged.schema, self.raw.columns).alias("line"))]
        if self.es is not None:
            good.append(F.struct(F.lit("es").alias("kind"), event_document(self.events_index).alias("line")))
        bad = [
            F.struct(F.lit("dead").alias("kind"), copy_line(staged.schema, self.dead.columns).alias("line")),
            F.struct(F.lit("outbox").alias("kind"), outbox.alias("line")),
        ]
        lines = staged.select(
            F.inline(F.when(valid, F.array(*good)).otherwise(F.array(*bad))),
            F.when(valid, F.to_date("event_ts")).alias(DAY),
            F.when(~valid, F.col("violations")).alias(VIOLATIONS),
        )
        write = RawBatchWrite(self.settings, label, self.raw, self.dead, OUTBOX, self.es is not None)
        result = merge_results([row.asDict() for row in lines.mapInArrow(write, RESULT_DDL).collect()])
        with self.pg.batch(label) as batch:
            batch.execute(
                UPSERT_VIOLATIONS,
                (self.name, f"{self.name}.raw", batch_id, result["rows"], json.dumps(result["violations"])),
            )
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

    # ---------------------------------------------------------------- running
    def desired_state(self) -> str | None:
        conn = self.pg.connection()
        with conn.transaction():
            row = conn.execute(
                f"SELECT desired_state FROM {self.platform.jobs_table} WHERE job_name = %s", (self.name,)
            ).fetchone()
        return None if row is None else str(row[0])

    def request_stop(self, *_: object) -> None:
        self._stop_requested = True

    def run(self) -> int:
        """Start the queries and wait; 0 when they stopped cleanly, 1 when one failed."""
        listener = HeartbeatListener(self.name, self.settings.pg_url)
        self.spark.streams.addListener(listener)
        queries = self.start()
        log.info("%s: started queries %s", self.name, [q.name for q in queries])
        self._report_state(None, running=True)
        try:
            while any(q.isActive for q in queries):
                failed = [q for q in queries if not q.isActive and q.exception() is not None]
                if failed:
                    break
                if self._stop_requested or (not self.options.available_now and self.desired_state() == "stopped"):
                    log.info("%s: stop requested, stopping queries at a batch boundary", self.name)
                    break
                time.sleep(1.0 if self.options.available_now else self.options.desired_state_poll_s)
        finally:
            self._stop_at_batch_boundary(queries)
            wait_until_reported(listener, [str(q.id) for q in queries])
            self.spark.streams.removeListener(listener)
            self.outbox.close()
            self.pg.close()
        errors = [(q.name, q.exception()) for q in queries if q.exception() is not None]
        for name, error in errors:
            log.error("%s: query %s failed: %s", self.name, name, error)
        self._report_state("; ".join(f"query {name} failed: {error}" for name, error in errors) or None)
        return 1 if errors else 0

    @staticmethod
    def _stop_at_batch_boundary(queries: list[StreamingQuery], timeout_s: float = 60.0) -> None:
        """Stop each query between micro-batches (stop() would interrupt a running foreachBatch)."""
        deadline = time.monotonic() + timeout_s
        for q in queries:
            while q.isActive and q.status.get("isTriggerActive") and time.monotonic() < deadline:
                time.sleep(0.2)
            if q.isActive:
                q.stop()

    def _report_state(self, error: str | None, running: bool = False) -> None:
        """Tells the registry (and so the supervisor and the jobs page) what the job is doing."""
        with pg_connect(self.settings.pg_url, application_name=f"tributary-{self.name}") as conn:
            registry = JobRegistry(conn)
            try:
                if running:
                    registry.record_running(self.name, self.spark.sparkContext.applicationId)
                else:
                    registry.record_job_exit(self.name, error[:4000] if error else None)
            except KeyError:
                # Run by hand on a database the platform never registered the job in: fine, but
                # then the supervisor does not know about this run.
                log.info("%s: not in the job registry; running unsupervised", self.name)


def parse_args(argv: list[str]) -> argparse.Namespace:
    defaults = JobOptions()
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pipeline", default=USER_EVENTS.name, choices=[USER_EVENTS.name], help="catalog pipeline this job runs"
    )
    parser.add_argument("--available-now", action="store_true", help="process what is in the topic now, then stop")
    parser.add_argument("--no-es", action="store_true", help="do not index into Elasticsearch")
    parser.add_argument("--starting-offsets", default=defaults.starting_offsets, help="earliest | latest | JSON")
    parser.add_argument("--max-offsets-per-trigger", type=int, default=defaults.max_offsets_per_trigger)
    parser.add_argument("--trigger-interval", type=int, default=defaults.trigger_interval_s, help="seconds")
    parser.add_argument("--native-kafka", action="store_true", help="use Spark's format('kafka') (needs its jar)")
    parser.add_argument(
        "--master", default=None, help="Spark master (default: TRIBUTARY_SPARK_MASTER unless spark-submit set one)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    settings = load_settings()
    options = replace(
        JobOptions(),
        starting_offsets=args.starting_offsets,
        max_offsets_per_trigger=args.max_offsets_per_trigger,
        trigger_interval_s=args.trigger_interval,
        available_now=args.available_now,
        es_enabled=not args.no_es,
        native_kafka=args.native_kafka,
    )
    # Under spark-submit the master comes from its command line; run directly, from the settings.
    master = args.master or (None if _launched_by_spark_submit() else settings.spark_master)
    spark = build_session(f"tributary-{USER_EVENTS.name}", master)
    job = UserEventsJob(spark, settings, options)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping at the next batch boundary", signum)
        job.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return job.run()


def _launched_by_spark_submit() -> bool:
    """spark-submit starts the JVM first and hands the Python driver its gateway port."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


if __name__ == "__main__":
    sys.exit(main())
