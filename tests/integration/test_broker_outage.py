"""The broker stops for 60 s in the middle of a stream: every job recovers, sinks end exact.

The three streaming jobs run as production runs them (spark-submit, processing-time triggers)
against a broker and an ES-API server of this test's own. Mid-stream the broker is stopped,
kept down for 60 s and started again on the same log directory; more records follow. Every
driver must ride out the outage by itself (the source and the outbox wait up to 120 s for the
broker), and each sink must end with exactly the produced records: 0 lost, 0 duplicated.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.integration.streaming_fixtures import prepare, scalar, send, start_driver
from tributary.catalog import APP_LOGS, PLATFORM, USER_EVENTS, WEATHER, Pipeline
from tributary.clients import es_client, pg_connect
from tributary.producers.app_logs import LogMix, generate_log_lines
from tributary.producers.user_events import EventMix, generate_events, user_rows
from tributary.producers.weather import ReadingMix, generate_readings
from tributary.settings import Settings
from tributary.stack.broker import KafkaBroker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTAGE_S = 60
USERS = 500


@dataclass
class Stream:
    """One pipeline's share of the test: what was produced, and where its valid records land."""

    pipeline: Pipeline
    raw_table: str
    generate: Callable[[int, int, datetime], Sequence[Any]]
    produced: list[Any]

    @property
    def valid(self) -> int:
        return sum(1 for e in self.produced if not e.kind.startswith("invalid:"))

    @property
    def invalid(self) -> int:
        return len(self.produced) - self.valid


def streams() -> list[Stream]:
    # Event times inside every watermark (nothing is late, whatever the batch boundaries).
    def events(count: int, seed: int, start: datetime) -> Sequence[Any]:
        mix = EventMix(users=USERS, invalid_share=0.02)
        return list(generate_events(count, seed=seed, start=start, events_per_s=1_000, mix=mix))

    def readings(count: int, seed: int, start: datetime) -> Sequence[Any]:
        mix = ReadingMix(stations=200, invalid_share=0.02)
        return list(generate_readings(count, seed=seed, start=start, readings_per_s=100, mix=mix))

    def lines(count: int, seed: int, start: datetime) -> Sequence[Any]:
        return list(generate_log_lines(count, seed=seed, start=start, lines_per_s=50, mix=LogMix(invalid_share=0.02)))

    return [
        Stream(USER_EVENTS, USER_EVENTS.tables.raw, events, []),
        Stream(WEATHER, WEATHER.tables.raw, readings, []),
        Stream(APP_LOGS, APP_LOGS.tables.raw, lines, []),
    ]


def produce(settings: Settings, stream: Stream, count: int, seed: int, start: datetime) -> None:
    records = list(stream.generate(count, seed, start))
    send(settings, stream.pipeline.topic.name, records)
    stream.produced.extend(records)


def raw_rows(settings: Settings, stream: Stream) -> int:
    return int(scalar(settings, f"SELECT count(*) FROM {stream.raw_table}"))


def job_log_tails(logs: dict[str, Path]) -> str:
    return "\n".join(f"--- {name}:\n{path.read_text(errors='replace')[-2500:]}" for name, path in logs.items())


@pytest.mark.timeout(1200)
def test_jobs_ride_out_a_60_s_broker_outage_and_sinks_end_exact(private_settings: Settings, tmp_path: Path) -> None:
    settings = private_settings
    # The broker private_settings started (its state lives under tmp_path / "services").
    broker = KafkaBroker(replace(settings, state_dir=tmp_path / "services"), progress=None)
    assert broker.pid_file.live() is not None, "private_settings' broker is not where the test expects it"
    all_streams = streams()
    for stream in all_streams:
        prepare(settings, stream.pipeline, PLATFORM)
    with pg_connect(settings.pg_url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO users (user_id, name, email, region, segment) VALUES (%s, %s, %s, %s, %s)", user_rows(USERS)
        )

    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)
    for n, stream in enumerate(all_streams):
        produce(settings, stream, 12_000, seed=40 + n, start=start)

    logs = {s.pipeline.name: tmp_path / f"{s.pipeline.name}.log" for s in all_streams}
    args = ("--max-offsets-per-trigger", "1500", "--trigger-interval", "1")
    drivers: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for stream in all_streams:
            drivers[stream.pipeline.name] = start_driver(stream.pipeline, logs[stream.pipeline.name], *args)

        # Mid-stream: every job has landed some of its records, none has all of them.
        deadline = time.monotonic() + 420
        while not all(raw_rows(settings, s) > 1_000 for s in all_streams):
            assert time.monotonic() < deadline, "not every job landed rows within 420 s\n" + job_log_tails(logs)
            exited = {name: d.returncode for name, d in drivers.items() if d.poll() is not None}
            assert not exited, f"drivers exited before the outage: {exited}\n" + job_log_tails(logs)
            time.sleep(1)
        before = {s.pipeline.name: raw_rows(settings, s) for s in all_streams}

        broker.down()
        time.sleep(OUTAGE_S)
        assert broker.up().healthy
        # More records after the restart: the jobs read them from the same logs.
        for n, stream in enumerate(all_streams):
            produce(settings, stream, 3_000, seed=60 + n, start=start + timedelta(minutes=2))

        deadline = time.monotonic() + 480
        while not all(raw_rows(settings, s) >= s.valid for s in all_streams):
            exited = {name: d.returncode for name, d in drivers.items() if d.poll() is not None}
            assert not exited, f"drivers died instead of riding out the outage: {exited}\n" + job_log_tails(logs)
            assert time.monotonic() < deadline, (
                f"not every record landed within 480 s of the restart: "
                f"{ {s.pipeline.name: (raw_rows(settings, s), s.valid) for s in all_streams} }\n" + job_log_tails(logs)
            )
            time.sleep(2)
    finally:
        for driver in drivers.values():
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGTERM)
        for driver in drivers.values():
            try:
                driver.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait(30)

    print(f"raw rows when the broker stopped: {before}")
    # 0 lost, 0 duplicated, in every sink.
    for stream in all_streams:
        assert raw_rows(settings, stream) == stream.valid, stream.pipeline.name
    invalid_total = sum(s.invalid for s in all_streams)
    assert scalar(settings, "SELECT count(*) FROM dead_letters") == invalid_total
    assert (
        scalar(
            settings, "SELECT count(*) FROM (SELECT DISTINCT topic, kafka_partition, kafka_offset FROM dead_letters) d"
        )
        == invalid_total
    )
    weather = next(s for s in all_streams if s.pipeline is WEATHER)
    assert scalar(settings, "SELECT count(*) FROM weather_late_readings") == 0
    assert scalar(settings, "SELECT sum(reading_count) FROM weather_summary WHERE station_id = '*'") == weather.valid
    es = es_client(settings)
    for stream, index in ((all_streams[0], USER_EVENTS.indices["events"]), (all_streams[2], APP_LOGS.indices["logs"])):
        es.indices.refresh(index=index.pattern)
        assert es.count(index=index.pattern)["count"] == stream.valid, stream.pipeline.name
    # Every dead letter is published once the broker is back (none left waiting in the outbox).
    assert scalar(settings, "SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0
