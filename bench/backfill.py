"""Benchmark of the backfill: raw rows/s recomputing one day of user_events.

    .venv/bin/python bench/backfill.py [--rows 1728000] [--users 1000] [--rows-per-chunk 500000]

One day of raw events (by default the demo producer's: 20 events/s over 1,000 users, so 1,728,000
rows) is COPYed into the raw table of a fresh database on the PostgreSQL server of
TRIBUTARY_TEST_PG_URL (dropped at the end); a broker on a free port takes the alerts. Then the
backfill of that day runs with targets summaries, anomalies and alerts (Elasticsearch is left
out: the embedded ES-API server indexes ~3k docs/s, see bench/user_events.py), first into empty
tables, then again (a rerun: everything is compared, nothing changes). Beside it, the phases
alone: the partitioned JDBC read, and the recomputation without writes.

Printed: `RESULT backfill: N rows in S s = R rows/s`, and the same for the rerun and the phases.
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import bench_database_url, bench_server, say
from pyspark.sql import SparkSession

from spark_jobs.batch.backfill import (
    ALERTS,
    ANOMALIES,
    SUMMARIES,
    BackfillReport,
    BackfillRequest,
    Progress,
    UserEventsBackfill,
    batch_conf,
    plan_chunks,
    run_backfill,
)
from spark_jobs.batch.raw_reader import read_raw_range
from spark_jobs.session import build_session
from tributary.catalog import PLATFORM, USER_EVENTS
from tributary.clients import kafka_admin, pg_connect
from tributary.migrations import apply_migrations
from tributary.producers.user_events import ACTION_WEIGHTS, DEVICE_TYPES, LOCATIONS, SEGMENTS, user_rows
from tributary.provisioning import ensure_topics
from tributary.settings import Settings, load_settings
from tributary.stack.broker import KafkaBroker
from tributary.stack.ports import free_port
from tributary.stack.postgres import drop_database, ensure_database

DAY_S = 86_400
RAW_COLUMNS = (
    "topic, kafka_partition, kafka_offset, kafka_timestamp, event_ts, user_id, product_id, action, "
    "device_id, device_type, location, user_segment, ip_address"
)


def raw_day(day: datetime, rows: int, users: int, seed: int = 1) -> bytes:
    """COPY CSV of `rows` raw events spread evenly over `day`, the demo producer's mix."""
    rng = random.Random(seed)
    actions, weights = zip(*ACTION_WEIGHTS.items(), strict=True)
    drawn = rng.choices(actions, weights, k=rows)
    step = DAY_S / rows
    lines = []
    for i in range(rows):
        user = rng.randint(1, users)
        ts = (day + timedelta(seconds=i * step)).isoformat()
        lines.append(
            f"user_events,{i % 3},{i // 3},{ts},{ts},{user},{rng.randint(1, 5_000)},{drawn[i]},dev-{user}-1,"
            f'{DEVICE_TYPES[i % 3]},"{LOCATIONS[user % len(LOCATIONS)]}",{SEGMENTS[user % len(SEGMENTS)]},'
            f"10.{user % 256}.{i % 256}.1\n"
        )
    return "".join(lines).encode()


def fill(settings: Settings, day: datetime, rows: int, users: int) -> float:
    """Schema, users and one day of raw events; returns the COPY's rows/s."""
    apply_migrations(settings.pg_url)
    payload = raw_day(day, rows, users)
    with pg_connect(settings.pg_url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO users (user_id, name, email, region, segment) VALUES (%s, %s, %s, %s, %s)", user_rows(users)
        )
        cur.execute("SELECT ensure_day_partition(%s, %s)", (USER_EVENTS.tables.raw, day.date()))
        conn.commit()
        started = time.perf_counter()
        with cur.copy(f"COPY {USER_EVENTS.tables.raw} ({RAW_COLUMNS}) FROM STDIN (FORMAT csv)") as copy:
            buffer = io.BytesIO(payload)
            while chunk := buffer.read(1 << 20):
                copy.write(chunk)
        conn.commit()
        elapsed = time.perf_counter() - started
        cur.execute(f"ANALYZE {USER_EVENTS.tables.raw}")
    return rows / elapsed


def timed_noop(spark: SparkSession, settings: Settings, request: BackfillRequest) -> tuple[float, float]:
    """Seconds of the partitioned read alone, and of read + recomputation (lines built, not written)."""
    backfill = UserEventsBackfill(spark, settings, USER_EVENTS, PLATFORM)
    [chunk] = plan_chunks(request.start, request.end, {}, 10**12, backfill.margin)
    low, high = chunk.read_range(backfill.margin)
    columns = backfill.read_columns(request.targets)

    def events():  # type: ignore[no-untyped-def]
        return read_raw_range(spark, settings, USER_EVENTS, low, high, columns=columns)

    # Warm up first (JVM, JDBC driver, Python workers): the backfill runs measure a warm session too.
    read_raw_range(spark, settings, USER_EVENTS, low, low + timedelta(hours=1)).count()
    with batch_conf(spark):
        started = time.perf_counter()
        events().write.format("noop").mode("overwrite").save()
        read_s = time.perf_counter() - started
        started = time.perf_counter()
        backfill.lines(events(), chunk, request).write.format("noop").mode("overwrite").save()
        return read_s, time.perf_counter() - started


def result(label: str, report: BackfillReport) -> None:
    written = ", ".join(
        f"{name} {c.written:,} written / {c.unchanged:,} unchanged" for name, c in report.targets.items()
    )
    print(
        f"RESULT {label}: {report.rows_read:,} rows in {report.seconds:.1f} s = "
        f"{report.rows_read / report.seconds:,.0f} rows/s ({report.chunks} chunks; {written})",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20 * DAY_S, help="raw rows in the day (default: 20/s)")
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--rows-per-chunk", type=int, default=500_000)
    parser.add_argument("--skip-phases", action="store_true", help="only the backfill and its rerun")
    args = parser.parse_args()

    day = (datetime.now(UTC) - timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    with bench_server() as server, tempfile.TemporaryDirectory(prefix="tributary-bench-") as tmp:
        settings = replace(
            load_settings(),
            state_dir=Path(tmp),
            pg_url=bench_database_url(server, "backfill"),
            kafka_bootstrap=f"127.0.0.1:{free_port()}",
            kafka_controller_port=free_port(),
            embedded_kafka=True,
        )
        broker = KafkaBroker(settings, progress=None)
        broker.up()
        ensure_database(settings.pg_url)
        try:
            ensure_topics(kafka_admin(settings), [PLATFORM.alerts_topic])
            say(f"filling {day:%Y-%m-%d} with {args.rows:,} raw events over {args.users:,} users ...")
            print(f"RESULT fill (COPY into the raw table): {fill(settings, day, args.rows, args.users):,.0f} rows/s")
            spark = build_session(
                "tributary-bench-backfill",
                "local[2]",
                {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"},
            )
            request = BackfillRequest(
                USER_EVENTS.name, day, day + timedelta(days=1), (SUMMARIES, ANOMALIES, ALERTS), requested_by="bench"
            )
            if not args.skip_phases:
                say("phases alone: partitioned read, then read + recomputation without writes ...")
                read_s, compute_s = timed_noop(spark, settings, request)
                print(
                    f"RESULT phase read (JDBC, hourly slices): {args.rows:,} rows in {read_s:.1f} s = {args.rows / read_s:,.0f} rows/s"
                )
                print(
                    f"RESULT phase read + recompute (no writes): {args.rows:,} rows in {compute_s:.1f} s = "
                    f"{args.rows / compute_s:,.0f} rows/s",
                    flush=True,
                )
            say("backfill into empty tables ...")
            report = run_backfill(
                spark, settings, request, progress=Progress(spark), rows_per_chunk=args.rows_per_chunk
            )
            result("backfill", report)
            say("rerun (every row compared, nothing changes) ...")
            result(
                "backfill rerun",
                run_backfill(spark, settings, request, progress=Progress(spark), rows_per_chunk=args.rows_per_chunk),
            )
            spark.stop()
        finally:
            drop_database(settings.pg_url)
            broker.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
