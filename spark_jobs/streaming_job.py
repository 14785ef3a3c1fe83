"""What every Tributary streaming job shares: reading the topic, queries, dead letters, running.

A pipeline's job subclasses `StreamingJob`, names its queries (`query_builders`) and writes its
batches with the shared sinks. This module gives each of them the same behaviour:

- the Kafka source with the catalog's limits; one checkpoint per query;
- invalid records to `dead_letters` and, through the outbox, to the dead-letter topic, with
  every failed rule (`dead_letter_lines`);
- per-batch counts (violations per rule, late rows, the job's own watermark) in the heartbeats;
- stop at a batch boundary on SIGTERM or when the registry's desired state is `stopped`;
- the registry told when the job runs and how it ended.

    python -m spark_jobs.<pipeline>.job --help
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from spark_jobs.background_task import BackgroundTaskError
from spark_jobs.heartbeats import UPSERT_BATCH_COUNTS, HeartbeatListener, wait_until_reported
from spark_jobs.session import build_session, launched_by_spark_submit
from spark_jobs.sinks.copy_lines import copy_line, csv_line
from spark_jobs.sinks.elasticsearch import ElasticsearchSink
from spark_jobs.sinks.outbox import OutboxPublisher
from spark_jobs.sinks.partition_writer import DAY, EVENT_TS, VIOLATIONS
from spark_jobs.sinks.postgres import MergeTarget, PostgresBatch, PostgresSink
from spark_jobs.sources.kafka import pipeline_source_options, read_kafka_stream
from tributary.catalog import PLATFORM, Pipeline, PlatformNames
from tributary.clients import es_client, kafka_config, pg_connect
from tributary.registry import JobRegistry
from tributary.settings import Settings, load_settings

log = logging.getLogger("tributary.streaming_job")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The dead-letter message carries at most this much of the payload; the table keeps all of it.
DLQ_PAYLOAD_BYTES = 65_536
DEAD_COLUMNS = ("topic", "kafka_partition", "kafka_offset", "pipeline", "kafka_timestamp", "payload", "reasons")
# Raw rows are keyed by source position; the partition key (event_ts) must be part of the key.
RAW_KEY = ("topic", "kafka_partition", "kafka_offset", "event_ts")
# Columns a parsed DataFrame must have for `dead_letter_lines` (besides the pipeline's own).
PARSED_COLUMNS = ("topic", "kafka_partition", "kafka_offset", "kafka_timestamp", "payload", "event_ts", "violations")


@dataclass(frozen=True)
class JobOptions:
    """How to run a job; None means the pipeline's catalog value."""

    starting_offsets: str = "earliest"
    max_offsets_per_trigger: int | None = None
    trigger_interval_s: int | None = None
    available_now: bool = False
    es_enabled: bool = True
    native_kafka: bool = False
    max_records_per_task: int = 25_000
    users_refresh_s: int = 60
    desired_state_poll_s: float = 5.0
    # Which of the job's queries to run (None: all of them; a subset for diagnosis).
    queries: tuple[str, ...] | None = None


class StreamingJob:
    """The queries of one pipeline's job and their lifecycle; subclasses add `query_builders`."""

    def __init__(
        self,
        spark: SparkSession,
        settings: Settings,
        options: JobOptions | None,
        pipeline: Pipeline,
        platform: PlatformNames = PLATFORM,
    ) -> None:
        self.spark = spark
        self.settings = settings
        self.options = options or JobOptions()
        self.pipeline = pipeline
        self.platform = platform
        self.name = pipeline.job_name
        self.dead = MergeTarget(
            platform.dead_letters_table, DEAD_COLUMNS, key=("topic", "kafka_partition", "kafka_offset")
        )
        self.pg = PostgresSink(settings.pg_url, application_name=f"tributary-{self.name}")
        has_indices = bool(pipeline.indices)
        self.es = ElasticsearchSink(es_client(settings)) if self.options.es_enabled and has_indices else None
        self.outbox = OutboxPublisher(self.pg, kafka_config(settings))
        self._stop_requested = False

    # ---------------------------------------------------------------- queries
    def query_builders(self) -> Mapping[str, Callable[[], StreamingQuery]]:
        """Query name -> function starting it; every query of the job, in start order."""
        raise NotImplementedError

    def source_options(self) -> dict[str, str]:
        """The Kafka source options of the job's queries: the catalog's topic, limits and data-loss
        policy (`on_data_loss`), the platform's Kafka client settings, and this run's options."""
        return pipeline_source_options(
            self.settings,
            self.pipeline,
            self.platform,
            starting_offsets=self.options.starting_offsets,
            max_offsets_per_trigger=self.options.max_offsets_per_trigger or None,
            # Several tasks per partition and batch keep both cores busy in local mode.
            max_records_per_partition=self.options.max_records_per_task,
        )

    def read(self) -> DataFrame:
        """The pipeline's topic as a stream with Spark's Kafka source columns."""
        return read_kafka_stream(self.spark, self.source_options(), use_native=self.options.native_kafka)

    def checkpoint(self, query: str) -> str:
        return f"{self.pipeline.checkpoint_location(self.settings.checkpoint_root)}/{query}"

    def writer(self, df: DataFrame, query: str, mode: str, batch: Callable[[DataFrame, int], None]) -> StreamingQuery:
        """Starts `df` as query `query`, each micro-batch handed to `batch` (foreachBatch)."""
        writer = (
            df.writeStream.queryName(f"{self.name}.{query}")
            .outputMode(mode)
            .option("checkpointLocation", self.checkpoint(query))
            .foreachBatch(batch)
        )
        if self.options.available_now:
            writer = writer.trigger(availableNow=True)
        else:
            interval = self.options.trigger_interval_s or self.pipeline.trigger_interval_s
            writer = writer.trigger(processingTime=f"{interval} seconds")
        return writer.start()

    def start(self) -> list[StreamingQuery]:
        builders = self.query_builders()
        wanted = self.options.queries or tuple(builders)
        unknown = set(wanted) - set(builders)
        if unknown:
            raise ValueError(f"{self.name}: unknown queries {sorted(unknown)}; known: {sorted(builders)}")
        return [builders[name]() for name in wanted]

    # ---------------------------------------------------------------- raw batches
    def raw_target(self, columns: tuple[str, ...]) -> MergeTarget:
        """How the pipeline's raw rows (`columns`, in table order) land: by source position, once."""
        return MergeTarget(self.pipeline.tables.raw, columns, key=RAW_KEY)

    def with_dead_letter_columns(self, parsed: DataFrame) -> DataFrame:
        """`parsed` (with `PARSED_COLUMNS`) plus the columns `dead_letter_lines` reads."""
        return parsed.select("*", F.lit(self.name).alias("pipeline"), F.col("violations").alias("reasons"))

    def dead_letter_lines(self, staged: DataFrame) -> list[Column]:
        """(kind, line) structs of an invalid record: its dead_letters row and outbox message.

        `staged` comes from `with_dead_letter_columns`. The message carries the position, the
        failed rules and the payload (base64, at most `DLQ_PAYLOAD_BYTES`) and is keyed by
        position, so a replay enqueues nothing twice.
        """
        position = F.concat_ws(":", "topic", "kafka_partition", "kafka_offset")
        message = F.to_json(
            F.struct(
                "pipeline",
                "topic",
                "kafka_partition",
                "kafka_offset",
                "kafka_timestamp",
                "reasons",
                F.base64(F.substring("payload", 1, DLQ_PAYLOAD_BYTES)).alias("payload_base64"),
                F.length("payload").alias("payload_bytes"),
            )
        )
        outbox = csv_line(
            F.concat(F.lit("dlq:"), position), F.lit(self.platform.dead_letter_topic.name), position, message
        )
        return [
            F.struct(F.lit("dead").alias("kind"), copy_line(staged.schema, self.dead.columns).alias("line")),
            F.struct(F.lit("outbox").alias("kind"), outbox.alias("line")),
        ]

    @staticmethod
    def split_lines(parsed: DataFrame, good: list[Column], bad: list[Column]) -> DataFrame:
        """The lines a `RawBatchWrite` takes: `good` structs for valid rows, `bad` for invalid ones."""
        valid = F.size("violations") == 0
        return parsed.select(
            F.inline(F.when(valid, F.array(*good)).otherwise(F.array(*bad))),
            F.when(valid, F.to_date("event_ts")).alias(DAY),
            F.when(valid, F.col("event_ts")).alias(EVENT_TS),
            F.when(~valid, F.col("violations")).alias(VIOLATIONS),
        )

    def record_batch_counts(
        self,
        query: str,
        batch_id: int,
        result: Mapping[str, Any],
        watermark: datetime | None = None,
    ) -> None:
        """Violations per rule, late rows and the job's own watermark, into the batch's heartbeat."""
        with self.pg.batch(f"{self.name}.{query} batch {batch_id}") as batch:
            batch.execute(
                UPSERT_BATCH_COUNTS,
                (
                    self.name,
                    f"{self.name}.{query}",
                    batch_id,
                    result["rows"],
                    json.dumps(result["violations"]),
                    result.get("late", 0),
                    watermark,
                ),
            )

    # ---------------------------------------------------------------- event-time watermark
    def stored_max_event_ts(self, query: str, batch_id: int | None = None) -> datetime | None:
        """The newest event time the batches of `query` before `batch_id` have seen (None: none yet).

        A replay of the batch that last moved it (same id) gets the value from before that batch,
        so it decides lateness and closes windows exactly as its first attempt did.
        """
        conn = self.pg.connection()
        with conn.transaction():
            row = conn.execute(
                f"SELECT max_event_ts, batch_id, previous_max_event_ts FROM {self.platform.watermarks_table} "
                "WHERE job_name = %s AND query_name = %s",
                (self.name, query),
            ).fetchone()
        if row is None:
            return None
        newest, moved_by, previous = row
        return previous if batch_id is not None and moved_by == batch_id else newest

    def advance_max_event_ts(
        self, query: str, max_event_us: int | None, batch_id: int | None = None, batch: PostgresBatch | None = None
    ) -> None:
        """Moves the stored newest event time forward (never back) after batch `batch_id`'s rows are in.

        With `batch`, inside that transaction (committing with what the batch decided).
        """
        if max_event_us is None:
            return
        # Exact: a float of epoch seconds can be 1 us off.
        self.advance_event_time(query, _EPOCH + timedelta(microseconds=max_event_us), batch_id, batch)

    def advance_event_time(
        self, query: str, newest: datetime, batch_id: int | None = None, batch: PostgresBatch | None = None
    ) -> None:
        """`advance_max_event_ts` for a moment already at hand (a job-kept mark such as closed windows)."""
        statement = f"""INSERT INTO {self.platform.watermarks_table} AS w (job_name, query_name, max_event_ts, batch_id)
            VALUES (%s, %s, %s, %s)
            ON CONFLICT (job_name, query_name) DO UPDATE SET
                previous_max_event_ts = CASE WHEN w.batch_id IS NOT DISTINCT FROM EXCLUDED.batch_id
                    THEN w.previous_max_event_ts ELSE w.max_event_ts END,
                max_event_ts = greatest(w.max_event_ts, EXCLUDED.max_event_ts),
                batch_id = EXCLUDED.batch_id,
                updated_at = now()"""
        params = (self.name, query, newest, batch_id)
        if batch is not None:
            batch.execute(statement, params)
            return
        with self.pg.batch(f"{self.name}.{query} watermark") as own:
            own.execute(statement, params)

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
        drain_error: BackgroundTaskError | None = None
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
            stop_at_batch_boundary(queries)
            wait_until_reported(listener, [str(q.id) for q in queries])
            self.spark.streams.removeListener(listener)
            try:
                self.drain()
            except BackgroundTaskError as exc:  # reported below with the queries' errors; the job exits 1
                drain_error = exc
            self.close()
        errors: list[tuple[str, object]] = [(f"query {q.name}", q.exception()) for q in queries if q.exception()]
        if drain_error is not None:
            errors.append(("background work", drain_error))
        for what, error in errors:
            log.error("%s: %s failed: %s", self.name, what, error)
        self._report_state("; ".join(f"{what} failed: {error}" for what, error in errors) or None)
        return 1 if errors else 0

    def drain(self) -> None:
        """Finish the job's background work after its queries stopped (raise `BackgroundTaskError`)."""

    def close(self) -> None:
        self.outbox.close()
        self.pg.close()

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


def stop_at_batch_boundary(queries: list[StreamingQuery], timeout_s: float = 60.0) -> None:
    """Stop each query between micro-batches (stop() would interrupt a running foreachBatch)."""
    deadline = time.monotonic() + timeout_s
    for q in queries:
        while q.isActive and q.status.get("isTriggerActive") and time.monotonic() < deadline:
            time.sleep(0.2)
        if q.isActive:
            q.stop()


JobFactory = Callable[[SparkSession, Settings, JobOptions], StreamingJob]


def parse_args(pipeline: Pipeline, argv: list[str], description: str) -> argparse.Namespace:
    defaults = JobOptions()
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default=pipeline.name, choices=[pipeline.name], help="catalog pipeline")
    parser.add_argument("--available-now", action="store_true", help="process what is in the topic now, then stop")
    parser.add_argument("--no-es", action="store_true", help="do not index into Elasticsearch")
    parser.add_argument("--starting-offsets", default=defaults.starting_offsets, help="earliest | latest | JSON")
    parser.add_argument("--max-offsets-per-trigger", type=int, default=pipeline.max_offsets_per_trigger)
    parser.add_argument("--trigger-interval", type=int, default=pipeline.trigger_interval_s, help="seconds")
    parser.add_argument("--native-kafka", action="store_true", help="use Spark's format('kafka') (needs its jar)")
    parser.add_argument(
        "--master", default=None, help="Spark master (default: TRIBUTARY_SPARK_MASTER unless spark-submit set one)"
    )
    return parser.parse_args(argv)


def main(pipeline: Pipeline, factory: JobFactory, description: str, argv: list[str] | None = None) -> int:
    """The driver entry point of `pipeline`'s job: options from the command line, settings from env."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(pipeline, sys.argv[1:] if argv is None else argv, description)
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
    master = args.master or (None if launched_by_spark_submit() else settings.spark_master)
    spark = build_session(f"tributary-{pipeline.name}", master)
    job = factory(spark, settings, options)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping at the next batch boundary", signum)
        job.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return job.run()
