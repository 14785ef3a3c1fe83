"""Reconcile pipelines hour by hour: Kafka <-> raw, raw <-> Elasticsearch, raw <-> summaries.

    spark-submit spark_jobs/batch/reconcile.py --pipeline user_events --start 2026-11-23T10:00Z --end 2026-11-23T12:00Z
    python -m spark_jobs.batch.reconcile --pipeline all          # the hours not checked yet
    python -m spark_jobs.batch.reconcile --pipeline app_logs --start ... --end ... --recompute-summaries

Every closed hour of the range (or, without a range, the hours after the last one checked up to
the latest closed hour) becomes one row of `reconciliation_runs` with its results; each hour's
readable summary is printed. Exit status: 0 when everything agrees, 1 on a mismatch, 3 when a
check could not run (the run's state is `error` and its summary says why). The checks are
described in `tributary/reconciliation.py` and `spark_jobs/batch/reconcile_summaries.py`.

A mismatch names the backfill that repairs it only where the pipeline's backfill
(`spark_jobs/batch/backfill.py`, `BACKFILLS`) has that target; otherwise the summary says how to
fix it. `--recompute-summaries` first rewrites the range's summaries from raw for pipelines that
have no backfill but a SQL recomputation (app_logs minute statistics), then checks. Only
user_events starts Spark; weather and app_logs are checked in SQL.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from elasticsearch import Elasticsearch
from pyspark.sql import SparkSession

from spark_jobs.batch.backfill import BACKFILLS
from spark_jobs.batch.reconcile_summaries import RECOMPUTE_FLAG, SQL_RECOMPUTES, check_summaries
from spark_jobs.session import build_session
from spark_jobs.submit import job_script
from tributary.catalog import PIPELINES, PLATFORM, Pipeline, PlatformNames, get_pipeline
from tributary.clients import es_client, pg_connect
from tributary.reconciliation import (
    CheckResult,
    HourReport,
    ReconciliationStore,
    check_kafka_raw,
    check_raw_es,
    committed_end_offsets,
    log_start_offsets,
    plan_hours,
    retention_skip,
    topic_partitions,
)
from tributary.settings import Settings, load_settings

log = logging.getLogger("tributary.reconcile")

# 2 is argparse's status for a bad command line, so a check that could not run is 3.
EXIT_PASSED, EXIT_MISMATCH, EXIT_ERROR = 0, 1, 3


@dataclass
class Reconciler:
    """Runs the three checks of a pipeline's hours and stores each hour as one run.

    The SparkSession is only started when a summaries check needs it (`spark_factory`).
    """

    settings: Settings
    spark_factory: Callable[[], SparkSession]
    platform: PlatformNames = PLATFORM
    requested_by: str = "cli"
    _spark: SparkSession | None = field(default=None, init=False)
    _es: Elasticsearch | None = field(default=None, init=False)

    @property
    def spark(self) -> SparkSession:
        if self._spark is None:
            self._spark = self.spark_factory()
        return self._spark

    @property
    def es(self) -> Elasticsearch:
        if self._es is None:
            self._es = es_client(self.settings)
        return self._es

    def close(self) -> None:
        """Stops the SparkSession if one was started."""
        if self._spark is not None:
            self._spark.stop()
            self._spark = None

    def run(
        self, pipeline: Pipeline, hours: Sequence[tuple[datetime, datetime]], now: datetime | None = None
    ) -> list[HourReport]:
        """Checks and stores each hour; a check that raises makes that hour's run an `error`."""
        now = now or datetime.now(UTC)
        reports = []
        with pg_connect(self.settings.pg_url, autocommit=True, application_name="tributary-reconcile") as conn:
            store = ReconciliationStore(conn, self.platform)
            log_starts: dict[int, int] | None = None
            for start, end in hours:
                skip = retention_skip(pipeline, start, now)
                if skip:
                    log.info("%s %s: skipped: %s", pipeline.name, start.isoformat(), skip)
                    continue
                run_id = store.start(pipeline.name, start, end, self.requested_by)
                try:
                    if log_starts is None:
                        partitions = topic_partitions(self.settings, pipeline.topic.name)
                        log_starts = log_start_offsets(self.settings, pipeline.topic.name, partitions)
                    results = self.check_hour(conn, pipeline, start, end, now, log_starts)
                    report = HourReport(pipeline.name, start, end, tuple(results))
                except Exception as error:  # stored as the run's error state and in the exit status
                    log.exception("%s %s: reconciliation run %s could not finish", pipeline.name, start, run_id)
                    report = HourReport(pipeline.name, start, end, error=f"{type(error).__name__}: {error}")
                store.finish(run_id, report)
                log.info("%s %s: run %s %s", pipeline.name, start.isoformat(), run_id, report.state)
                reports.append(report)
        return reports

    def check_hour(
        self,
        conn: psycopg.Connection[Any],
        pipeline: Pipeline,
        start: datetime,
        end: datetime,
        now: datetime,
        log_starts: dict[int, int],
    ) -> list[CheckResult]:
        results = check_kafka_raw(
            conn,
            pipeline,
            start,
            end,
            log_starts=log_starts,
            committed_ends=committed_end_offsets(conn, pipeline, self.platform),
            platform=self.platform,
        )
        targets = backfill_targets(pipeline)
        results.append(check_raw_es(conn, self.es, pipeline, start, end, now=now, backfill_targets=targets))
        results.extend(
            check_summaries(
                lambda: self.spark, self.settings, pipeline, start, end, conn=conn, backfill_targets=targets
            )
        )
        return results

    def recompute_summaries(self, pipeline: Pipeline, hours: Sequence[tuple[datetime, datetime]]) -> list[str]:
        """Rewrites the summaries of `hours` from raw where the pipeline has a SQL recomputation
        (`SQL_RECOMPUTES`); one log line per hour. Raises for other pipelines."""
        recompute = SQL_RECOMPUTES.get(pipeline.name)
        if recompute is None:
            raise ValueError(
                f"{pipeline.name} summaries have no SQL recomputation (those of {', '.join(sorted(SQL_RECOMPUTES))} "
                f"do); repair them with the backfill (tributary_backfill, targets summaries)"
            )
        with pg_connect(self.settings.pg_url, autocommit=True, application_name="tributary-reconcile") as conn:
            return [recompute(conn, pipeline, start, end) for start, end in hours]


def backfill_targets(pipeline: Pipeline) -> tuple[str, ...]:
    """What the pipeline's backfill can redo (none when it has no backfill)."""
    backfill = BACKFILLS.get(pipeline.name)
    return tuple(backfill.targets) if backfill is not None else ()


def exit_status(reports: Sequence[HourReport]) -> int:
    """3 if any hour could not be checked, else 1 if any mismatched, else 0."""
    states = {r.state for r in reports}
    if "error" in states:
        return EXIT_ERROR
    return EXIT_MISMATCH if "failed" in states else EXIT_PASSED


def reconcilable_pipelines(name: str) -> list[Pipeline]:
    """`name`'s catalog entry, or for "all" every pipeline whose streaming job exists."""
    if name == "all":
        return [p for p in PIPELINES.values() if job_script(p).exists()]
    return [get_pipeline(name)]


def parse_time(text: str) -> datetime:
    """An ISO date-time; without a zone it is UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date-time such as 2026-11-23T10:00:00Z") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pipeline", default="all", choices=["all", *sorted(PIPELINES)], help="catalog pipeline, or all with a job"
    )
    parser.add_argument("--start", type=parse_time, help="first hour to check (ISO; rounded down to the hour)")
    parser.add_argument("--end", type=parse_time, help="end of the range (ISO, exclusive; rounded up to the hour)")
    parser.add_argument("--requested-by", default="cli", help="stored with each run, e.g. the Airflow run")
    parser.add_argument(
        "--master", default=None, help="Spark master (default: TRIBUTARY_SPARK_MASTER unless spark-submit set one)"
    )
    parser.add_argument(
        RECOMPUTE_FLAG,
        action="store_true",
        help=(
            "first rewrite the range's summaries from raw, for pipelines without a backfill that have a SQL "
            f"recomputation ({', '.join(sorted(SQL_RECOMPUTES))}); needs --start and --end"
        ),
    )
    args = parser.parse_args(argv)
    if (args.start is None) != (args.end is None):
        parser.error("give both --start and --end, or neither (then the hours not checked yet are checked)")
    if args.recompute_summaries and args.start is None:
        parser.error(f"{RECOMPUTE_FLAG} rewrites a range: give --start and --end")
    if args.recompute_summaries and args.pipeline != "all" and args.pipeline not in SQL_RECOMPUTES:
        parser.error(
            f"{RECOMPUTE_FLAG}: {args.pipeline} has no SQL recomputation (only {', '.join(sorted(SQL_RECOMPUTES))}); "
            "repair its summaries with the backfill"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    settings = load_settings()
    now = datetime.now(UTC)
    # Under spark-submit the master comes from its command line; run directly, from the settings.
    master = args.master or (None if "PYSPARK_GATEWAY_PORT" in os.environ else settings.spark_master)
    reconciler = Reconciler(
        settings,
        # WARN: the job's output is the summaries (and, under Airflow, the task log), not Spark's INFO lines.
        lambda: build_session("tributary-reconcile", master, extra_conf={"spark.log.level": "WARN"}),
        requested_by=args.requested_by,
    )
    reports: list[HourReport] = []
    try:
        for pipeline in reconcilable_pipelines(args.pipeline):
            with pg_connect(settings.pg_url, autocommit=True) as conn:
                last = ReconciliationStore(conn).last_checked_end(pipeline.name)
            requested = (args.start, args.end) if args.start else None
            hours, still_open = plan_hours(pipeline, now, requested=requested, last_checked_end=last)
            for start, _ in still_open:
                print(f"{pipeline.name} {start:%Y-%m-%d %H:%M}: not closed yet (late data may still land); not checked")
            if not hours:
                print(f"{pipeline.name}: no closed hour left to check")
                continue
            if args.recompute_summaries and pipeline.name in SQL_RECOMPUTES:
                for line in reconciler.recompute_summaries(pipeline, hours):
                    print(line)
            reports += reconciler.run(pipeline, hours, now)
    finally:
        reconciler.close()
    for report in reports:
        print(report.summary())
    failed = sum(r.state == "failed" for r in reports)
    errors = sum(r.state == "error" for r in reports)
    print(f"reconciliation: {len(reports)} hours checked, {failed} with mismatches, {errors} with errors")
    return exit_status(reports)


if __name__ == "__main__":
    sys.exit(main())
