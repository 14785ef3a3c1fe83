"""Benchmark of the user_events job: throughput, latency, and the bare COPY ceiling beside them.

    .venv/bin/python bench/user_events.py [--events 1000000] [--es-events 30000] [--rate 5000]

It starts its own broker and ES-API server on free ports and uses a fresh database on the
PostgreSQL server of TRIBUTARY_TEST_PG_URL (dropped at the end), so a running `make up` stack is
left alone. Printed figures:

1. COPY ceiling: rows/s of a bare COPY of raw-event rows into a table keyed like the raw table;
2. end to end with ES off: N events produced up front, the job run until they are all in
   PostgreSQL (`--available-now`), events/s over the whole run (start-up and the close of the last
   windows included), from the start to the last raw row, and from the first raw row to the last
   (the sustained rate of a running job);
3. the same with ES on (fewer events: the embedded ES-API server indexes ~3k docs/s);
4. latency: events produced at a steady rate while the job runs; p50/p95/max of
   produce time -> row written in PostgreSQL.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import bench_database_url, bench_server, say

from spark_jobs.session import build_session
from spark_jobs.user_events.job import JobOptions, UserEventsJob
from tributary.catalog import PLATFORM, USER_EVENTS
from tributary.clients import es_client, kafka_admin, kafka_config, pg_connect
from tributary.migrations import apply_migrations
from tributary.producers.user_events import EventMix, generate_events, produce, user_rows
from tributary.provisioning import ensure_index_templates, ensure_topics
from tributary.settings import Settings, load_settings
from tributary.stack.broker import KafkaBroker
from tributary.stack.ports import free_port
from tributary.stack.postgres import database_url, drop_database, ensure_database
from tributary.stack.search import OsmemSearch


def copy_ceiling(pg_url: str, rows: int) -> float:
    """rows/s of COPY straight into a table with the raw table's columns and primary key."""
    day = datetime(2026, 11, 23, tzinfo=UTC)
    lines = "".join(
        f"user_events,{i % 3},{i},{day.isoformat()},{(day + timedelta(microseconds=i)).isoformat()},"
        f'{i % 1000 + 1},{i % 5000 + 1},view,dev-{i % 1000},mobile,"Berlin, DE",regular,10.0.{i % 256}.1\n'
        for i in range(rows)
    ).encode()
    with pg_connect(pg_url) as conn:
        conn.execute(
            "CREATE TABLE copy_ceiling (LIKE user_events INCLUDING DEFAULTS, PRIMARY KEY (topic, kafka_partition, kafka_offset))"
        )
        conn.commit()
        columns = "topic, kafka_partition, kafka_offset, kafka_timestamp, event_ts, user_id, product_id, action, device_id, device_type, location, user_segment, ip_address"
        started = time.perf_counter()
        with conn.cursor() as cur, cur.copy(f"COPY copy_ceiling ({columns}) FROM STDIN (FORMAT csv)") as copy:
            buffer = io.BytesIO(lines)
            while chunk := buffer.read(1 << 20):
                copy.write(chunk)
        conn.commit()
        elapsed = time.perf_counter() - started
        conn.execute("DROP TABLE copy_ceiling")
        conn.commit()
    return rows / elapsed


def count_raw(settings: Settings) -> int:
    with pg_connect(settings.pg_url) as conn:
        row = conn.execute("SELECT count(*) FROM user_events").fetchone()
    return int(row[0]) if row else 0


def fresh_run(settings: Settings, tag: str, users: int) -> Settings:
    """A new database and checkpoint root for one measurement, schema and topic in place."""
    url = bench_database_url(settings.pg_url, tag)
    ensure_database(url)
    run = replace(settings, pg_url=url, checkpoint_root=f"{settings.checkpoint_root}/{tag}")
    apply_migrations(url)
    with pg_connect(url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO users (user_id, name, email, region, segment) VALUES (%s, %s, %s, %s, %s)", user_rows(users)
        )
    return run


def throughput(spark, settings: Settings, topic_name: str, events: int, es_enabled: bool) -> None:  # type: ignore[no-untyped-def]
    pipeline = replace(USER_EVENTS, topic=replace(USER_EVENTS.topic, name=topic_name))
    ensure_topics(kafka_admin(settings), [pipeline.topic])
    say(f"producing {events:,} events to {topic_name} ...")
    start = datetime.now(UTC) - timedelta(minutes=30)
    report = produce(
        generate_events(
            events, seed=1, start=start, events_per_s=events / 600, mix=EventMix(users=1_000, invalid_share=0.01)
        ),
        producer_config=kafka_config(settings),
        topic=topic_name,
    )
    say(
        f"produced {report.produced:,} in {report.seconds:.1f}s ({report.rate:,.0f}/s); running the job (availableNow) ..."
    )
    job = UserEventsJob(spark, settings, JobOptions(available_now=True, es_enabled=es_enabled), pipeline)
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    assert job.run() == 0, "the job failed"
    wall = time.perf_counter() - started
    with pg_connect(settings.pg_url) as conn:
        landed, dead, first, last = conn.execute(  # type: ignore[misc]
            "SELECT (SELECT count(*) FROM user_events), (SELECT count(*) FROM dead_letters), min(ingested_at), max(ingested_at) "
            "FROM user_events"
        ).fetchone()
        phases = conn.execute(
            "SELECT query_name, d.key, sum(d.value::numeric) / 1000 FROM job_heartbeats, jsonb_each_text(durations_ms) d "
            "GROUP BY 1, 2 HAVING sum(d.value::numeric) > 500 ORDER BY 1, 3 DESC"
        ).fetchall()
    for query, phase, seconds in phases:
        print(f"  {query:24} {phase:18} {seconds:7.1f}s")
    # Without start-up: from the first row written to the last.
    span = (last - first).total_seconds()
    steady = f"; {landed / span:,.0f} events/s from the first row written to the last" if span > 1 else ""
    # From the start of the run to the last raw row: start-up included, the last window close not.
    to_last_row = (last - started_at).total_seconds()
    label = "ES on " if es_enabled else "ES off"
    print(
        f"RESULT end-to-end {label}: {events:,} events -> {landed:,} raw rows + {dead:,} dead letters in {wall:.1f}s "
        f"= {events / wall:,.0f} events/s over the whole run (incl. JVM and Python worker start and the last "
        f"windows' close); {events / to_last_row:,.0f} events/s from the start to the last row written{steady}",
        flush=True,
    )


def latency(spark, settings: Settings, topic_name: str, rate: float, seconds: int) -> None:  # type: ignore[no-untyped-def]
    pipeline = replace(USER_EVENTS, topic=replace(USER_EVENTS.topic, name=topic_name))
    ensure_topics(kafka_admin(settings), [pipeline.topic])
    job = UserEventsJob(
        spark,
        settings,
        JobOptions(available_now=False, es_enabled=False, trigger_interval_s=1, starting_offsets="earliest"),
        pipeline,
    )
    queries = job.start()
    say(f"job streaming; warming up with {int(rate * 5):,} events ...")
    warm = list(generate_events(int(rate * 5), seed=3, start=datetime.now(UTC), events_per_s=rate, mix=EventMix()))
    produce(iter(warm), producer_config=kafka_config(settings), topic=topic_name, rate=rate)
    deadline = time.monotonic() + 120
    while count_raw(settings) < len(warm) and time.monotonic() < deadline:
        time.sleep(0.5)
    measured_from = datetime.now(UTC)
    say(f"producing {rate:,.0f} events/s for {seconds}s ...")
    events = generate_events(int(rate * seconds), seed=4, start=measured_from, events_per_s=rate, mix=EventMix())
    producer = threading.Thread(
        target=produce,
        kwargs={"events": events, "producer_config": kafka_config(settings), "topic": topic_name, "rate": rate},
    )
    producer.start()
    producer.join()
    expected = len(warm) + int(rate * seconds)
    deadline = time.monotonic() + 120
    while count_raw(settings) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
    for query in queries:
        query.stop()
    with pg_connect(settings.pg_url) as conn:
        p50, p95, worst, n = conn.execute(  # type: ignore[misc]
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY l), percentile_cont(0.95) WITHIN GROUP (ORDER BY l), max(l), count(*) "
            "FROM (SELECT extract(epoch FROM ingested_at - kafka_timestamp) AS l FROM user_events WHERE kafka_timestamp >= %s) x",
            (measured_from,),
        ).fetchone()
    print(
        f"RESULT latency at {rate:,.0f} events/s (trigger 1s, ES off, {n:,} events): produce -> row in PostgreSQL "
        f"p50 {p50:.2f}s, p95 {p95:.2f}s, max {worst:.2f}s",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events for the ES-off throughput run")
    parser.add_argument("--es-events", type=int, default=30_000, help="events for the ES-on run (0 skips it)")
    parser.add_argument("--rate", type=float, default=5_000, help="steady rate for the latency run (0 skips it)")
    parser.add_argument("--latency-seconds", type=int, default=60)
    parser.add_argument("--copy-rows", type=int, default=1_000_000)
    args = parser.parse_args()

    base = load_settings()
    with bench_server() as server, tempfile.TemporaryDirectory(prefix="tributary-bench-") as tmp:
        settings = replace(
            base,
            state_dir=Path(tmp),
            pg_url=database_url(server, "postgres"),
            kafka_bootstrap=f"127.0.0.1:{free_port()}",
            kafka_controller_port=free_port(),
            embedded_kafka=True,
            es_url=f"http://127.0.0.1:{free_port()}",
            embedded_es=True,
            es_plain_json=True,
            checkpoint_root=f"{tmp}/checkpoints",
        )
        broker, search = KafkaBroker(settings, progress=None), OsmemSearch(settings, progress=None)
        broker.up()
        search.up()
        databases: list[str] = []
        try:
            ensure_topics(kafka_admin(settings), [PLATFORM.alerts_topic, PLATFORM.dead_letter_topic])
            ensure_index_templates(es_client(settings), list(USER_EVENTS.indices.values()))
            spark = build_session("tributary-bench", "local[2]", {"spark.ui.enabled": "false"})

            run = fresh_run(settings, "copy", users=1)
            databases.append(run.pg_url)
            say(f"COPY ceiling: {args.copy_rows:,} rows ...")
            print(
                f"RESULT COPY ceiling: {copy_ceiling(run.pg_url, args.copy_rows):,.0f} rows/s (bare COPY, keyed table)",
                flush=True,
            )

            run = fresh_run(settings, "es_off", users=1_000)
            databases.append(run.pg_url)
            throughput(spark, run, "bench_es_off", args.events, es_enabled=False)
            if args.es_events:
                run = fresh_run(settings, "es_on", users=1_000)
                databases.append(run.pg_url)
                throughput(spark, run, "bench_es_on", args.es_events, es_enabled=True)
            if args.rate:
                run = fresh_run(settings, "latency", users=1_000)
                databases.append(run.pg_url)
                latency(spark, run, "bench_latency", args.rate, args.latency_seconds)
            spark.stop()
        finally:
            for url in databases:
                drop_database(url)
            search.down()
            broker.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
