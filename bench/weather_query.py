"""Benchmark of the weather dashboard's reads of weather_summary: p50/p95/p99 per query shape.

    .venv/bin/python bench/weather_query.py [--rows 1000000] [--stations 1000] [--runs 2000] [--binary] [--keep]

A fresh database on the PostgreSQL server of TRIBUTARY_TEST_PG_URL (or --pg-url) gets the
migrations and `--rows` hourly station rows (by default 1,000 stations x 1,000 hours, the newest
hour still in progress), generated in SQL in time order as the streaming job writes them, plus
the all-stations row ('*') of every hour; then VACUUM ANALYZE (what autovacuum does after bulk
inserts). Each query shape the product needs runs `--warmup` times, then `--runs` times measured,
every run with other parameters (hour, station), as a prepared statement through psycopg, the
results in text format (psycopg's default, as the UI pages fetch) or, with --binary, in binary.
The time is the client's wall time of one query: execute and fetch every row.

- last hour, all stations: every station's row of one complete hour (the dashboard's table);
- last hour, overall: the '*' row of that hour (the dashboard's headline);
- station, 24 h / 7 days: one station's hourly rows over a range, oldest first (its chart).

Printed: the fill's rows/s; `RESULT <query>: p50 .. ms, p95 .., p99 .., max ..`; per query the
EXPLAIN (ANALYZE, BUFFERS) summary (plan nodes, index, buffers, server time); the round trip of a
prepared `SELECT 1` (the floor under every query); and a table against the goal (p95 < 1 ms; the
seed promised < 5 ms). The exit status is 0 whether the goal is met or not, non-zero on errors.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from _common import bench_server, say, throwaway_database

from spark_jobs.weather.transforms import ALL_STATIONS
from tributary.catalog import WEATHER
from tributary.clients import pg_connect
from tributary.migrations import MIGRATIONS_DIR, apply_migrations
from tributary.producers.weather import CITIES
from tributary.stack.postgres import redact_url, server_answers

TABLE = WEATHER.tables.summary
WINDOW_S = WEATHER.windows[0].duration_s
GOAL_P95_MS = 1.0
SEED_P95_MS = 5.0

# Station rows in time order (hour by hour, every station in each), as the streaming job writes
# them. Station ids as tributary.producers.weather.station_id makes them ('ST00001'); the daily
# temperature curve and the city means as that producer's. The subquery keeps each random()
# drawn once per row (volatile functions keep it from being flattened).
FILL_STATIONS = f"""
INSERT INTO {TABLE} (
    station_id, window_seconds, window_start, reading_count,
    sum_temperature, min_temperature, max_temperature,
    sum_humidity, min_humidity, max_humidity,
    sum_wind_speed, min_wind_speed, max_wind_speed, updated_at)
SELECT 'ST' || lpad(s::text, 5, '0'), %(window_s)s, w, n,
       n * t, t - 0.5 - random() * 2, t + 0.5 + random() * 2,
       n * hum, greatest(0, hum - 2 - random() * 10), least(100, hum + 2 + random() * 10),
       n * wind, wind * random(), wind + 1 + random() * 6,
       least(w + make_interval(secs => %(window_s)s + 120), now())
FROM (
    SELECT s, w, n,
           (%(means)s::float8[])[s %% %(cities)s + 1]
             + 6 * sin((extract(epoch FROM w) / 3600 - 9) / 24 * 2 * pi()) + random() * 3 - 1.5 AS t,
           40 + random() * 50 AS hum,
           random() * 8 AS wind
    FROM (
        SELECT i %% %(stations)s + 1 AS s,
               %(first)s::timestamptz + (i / %(stations)s) * make_interval(secs => %(window_s)s) AS w,
               50 + (random() * 10)::int AS n
        FROM generate_series(0, %(rows)s - 1) AS i
    ) AS slot
) AS reading
"""

# The all-stations row of every hour, from the station rows (as the job computes it).
FILL_ALL_STATIONS = f"""
INSERT INTO {TABLE} (
    station_id, window_seconds, window_start, reading_count,
    sum_temperature, min_temperature, max_temperature,
    sum_humidity, min_humidity, max_humidity,
    sum_wind_speed, min_wind_speed, max_wind_speed, updated_at)
SELECT %(all)s, window_seconds, window_start, sum(reading_count),
       sum(sum_temperature), min(min_temperature), max(max_temperature),
       sum(sum_humidity), min(min_humidity), max(max_humidity),
       sum(sum_wind_speed), min(min_wind_speed), max(max_wind_speed), max(updated_at)
FROM {TABLE}
GROUP BY window_seconds, window_start
ORDER BY window_start
"""

STATS = "reading_count, avg_temperature, min_temperature, max_temperature, avg_humidity, avg_wind_speed, max_wind_speed"

LAST_HOUR_STATIONS = f"""
SELECT station_id, {STATS}
FROM {TABLE}
WHERE window_seconds = %(window_s)s AND window_start = %(hour)s AND station_id <> %(all)s
"""

LAST_HOUR_OVERALL = f"""
SELECT {STATS}
FROM {TABLE}
WHERE station_id = %(all)s AND window_seconds = %(window_s)s AND window_start = %(hour)s
"""

STATION_RANGE = f"""
SELECT window_start, {STATS}
FROM {TABLE}
WHERE station_id = %(station)s AND window_seconds = %(window_s)s
  AND window_start >= %(start)s AND window_start < %(end)s
ORDER BY window_start
"""


@dataclass(frozen=True)
class Dataset:
    """What the fill wrote: `hours` hourly windows of `stations` stations, the newest in progress."""

    stations: int
    hours: int
    current_hour: datetime

    @property
    def first_hour(self) -> datetime:
        return self.current_hour - timedelta(hours=self.hours - 1)

    @property
    def rows(self) -> int:
        return self.stations * self.hours + self.hours

    def complete_hour(self, rng: random.Random) -> datetime:
        """A random complete hour (the newest complete one when there is only one)."""
        return self.current_hour - timedelta(hours=rng.randint(1, max(1, self.hours - 1)))

    def station(self, rng: random.Random) -> str:
        return f"ST{rng.randint(1, self.stations):05d}"

    def range_end(self, rng: random.Random, span: timedelta) -> datetime:
        """The end of a random `span` inside the data (the newest span when the data is shorter)."""
        newest = self.current_hour + timedelta(hours=1)
        spare_hours = max(0, self.hours - int(span / timedelta(hours=1)))
        return newest - timedelta(hours=rng.randint(0, spare_hours))


@dataclass(frozen=True)
class QueryShape:
    """One query the product runs, and how to draw the parameters of one run."""

    name: str
    sql: str
    params: Callable[[Dataset, random.Random], dict[str, Any]]


def _hour(dataset: Dataset, rng: random.Random) -> dict[str, Any]:
    # Any complete hour, not only the newest: the runs touch the whole table, not one cached hour.
    return {"window_s": WINDOW_S, "all": ALL_STATIONS, "hour": dataset.complete_hour(rng)}


def _station_range(span: timedelta) -> Callable[[Dataset, random.Random], dict[str, Any]]:
    def draw(dataset: Dataset, rng: random.Random) -> dict[str, Any]:
        end = dataset.range_end(rng, span)
        return {"window_s": WINDOW_S, "station": dataset.station(rng), "start": end - span, "end": end}

    return draw


SHAPES = (
    QueryShape("last hour, all stations", LAST_HOUR_STATIONS, _hour),
    QueryShape("last hour, overall ('*')", LAST_HOUR_OVERALL, _hour),
    QueryShape("station, 24 h", STATION_RANGE, _station_range(timedelta(hours=24))),
    QueryShape("station, 7 days", STATION_RANGE, _station_range(timedelta(days=7))),
)


@dataclass(frozen=True)
class Latency:
    """Client wall times of one query shape, in ms, and the rows a run returned on average."""

    name: str
    samples_ms: list[float]
    mean_rows: float

    def percentile(self, p: int) -> float:
        if len(self.samples_ms) < 2:
            return self.samples_ms[0]
        return statistics.quantiles(self.samples_ms, n=100, method="inclusive")[p - 1]

    @property
    def p95(self) -> float:
        return self.percentile(95)

    def line(self) -> str:
        return (
            f"p50 {self.percentile(50):.3f} ms, p95 {self.p95:.3f} ms, p99 {self.percentile(99):.3f} ms, "
            f"max {max(self.samples_ms):.3f} ms ({len(self.samples_ms):,} runs, {self.mean_rows:,.0f} rows each)"
        )


def fill(pg_url: str, dataset: Dataset, migrations_dir: Path) -> None:
    """Migrations, then the summary rows; prints rows/s of the INSERTs and the VACUUM ANALYZE time."""
    apply_migrations(pg_url, migrations_dir)
    params = {
        "window_s": WINDOW_S,
        "first": dataset.first_hour,
        "stations": dataset.stations,
        "rows": dataset.stations * dataset.hours,
        "means": [mean for _, mean in CITIES],
        "cities": len(CITIES),
        "all": ALL_STATIONS,
    }
    with pg_connect(pg_url, autocommit=True) as conn:
        started = time.perf_counter()
        with conn.transaction():
            conn.execute(FILL_STATIONS, params)
            conn.execute(FILL_ALL_STATIONS, params)
        fill_s = time.perf_counter() - started
        print(
            f"RESULT fill (INSERT ... SELECT generate_series, PK + window index maintained): {dataset.rows:,} rows "
            f"in {fill_s:.1f} s = {dataset.rows / fill_s:,.0f} rows/s",
            flush=True,
        )
        started = time.perf_counter()
        conn.execute(f"VACUUM (ANALYZE) {TABLE}")
        vacuum_s = time.perf_counter() - started
        table_size, index_size = conn.execute(
            "SELECT pg_size_pretty(pg_table_size(%(t)s::regclass)), pg_size_pretty(pg_indexes_size(%(t)s::regclass))",
            {"t": TABLE},
        ).fetchone() or ("?", "?")
        say(f"VACUUM ANALYZE {vacuum_s:.1f} s; table {table_size}, indexes {index_size}")


@dataclass(frozen=True)
class Runs:
    """How each query shape is run: unmeasured and measured runs, and the result format."""

    warmup: int
    measured: int
    binary: bool  # psycopg `cursor(binary=True)`: values arrive binary, no text parsing on the client

    @property
    def result_format(self) -> str:
        return "binary" if self.binary else "text"


def timed_runs(
    conn: psycopg.Connection[Any], sql: str, draw: Callable[[], dict[str, Any] | None], runs: Runs
) -> tuple[list[float], float]:
    """Client wall times (ms) of the measured prepared executions + fetches, after the warm-up ones."""
    samples: list[float] = []
    rows = 0
    with conn.cursor(binary=runs.binary) as cur:
        for i in range(runs.warmup + runs.measured):
            params = draw()
            started = time.perf_counter_ns()
            cur.execute(sql, params, prepare=True)
            fetched = cur.fetchall()
            elapsed_ms = (time.perf_counter_ns() - started) / 1e6
            if i >= runs.warmup:
                samples.append(elapsed_ms)
                rows += len(fetched)
    return samples, rows / max(1, runs.measured)


def measure(conn: psycopg.Connection[Any], shape: QueryShape, dataset: Dataset, runs: Runs) -> Latency:
    rng = random.Random(shape.name)
    samples, mean_rows = timed_runs(conn, shape.sql, lambda: shape.params(dataset, rng), runs)
    return Latency(shape.name, samples, mean_rows)


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


def plan_summary(conn: psycopg.Connection[Any], shape: QueryShape, dataset: Dataset) -> str:
    """One line from EXPLAIN (ANALYZE, BUFFERS) of `shape` with the newest parameters it can get."""
    params = shape.params(dataset, random.Random(0))
    if "hour" in params:
        params["hour"] = dataset.current_hour - timedelta(hours=1)
    if "end" in params:
        params["start"] = params["start"] + (dataset.current_hour + timedelta(hours=1) - params["end"])
        params["end"] = dataset.current_hour + timedelta(hours=1)
    row = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + shape.sql, params).fetchone()
    if row is None:
        raise RuntimeError(f"EXPLAIN of {shape.name!r} returned no plan")
    [explained] = row[0] if isinstance(row[0], list) else json.loads(row[0])
    top = explained["Plan"]
    nodes = []
    for node in _plan_nodes(top):
        text = node["Node Type"]
        if "Index Name" in node:
            text += f" using {node['Index Name']}"
        if "Heap Fetches" in node:
            text += f" (heap fetches {node['Heap Fetches']})"
        nodes.append(text)
    return (
        f"{' <- '.join(nodes)}; rows {top['Actual Rows']:,}; buffers hit {top.get('Shared Hit Blocks', 0)} "
        f"read {top.get('Shared Read Blocks', 0)}; planning {explained['Planning Time']:.3f} ms, "
        f"execution {explained['Execution Time']:.3f} ms"
    )


def verdict(latency: Latency) -> str:
    goal = "PASS" if latency.p95 < GOAL_P95_MS else "MISS"
    seed = "PASS" if latency.p95 < SEED_P95_MS else "MISS"
    return (
        f"| {latency.name:26} | {latency.mean_rows:>7,.0f} | {latency.percentile(50):7.3f} | {latency.p95:7.3f} | "
        f"{latency.percentile(99):7.3f} | {max(latency.samples_ms):8.3f} | {goal:^13} | {seed:^13} |"
    )


def run(pg_url: str, dataset: Dataset, runs: Runs, migrations_dir: Path) -> None:
    say(
        f"filling {TABLE}: {dataset.stations:,} stations x {dataset.hours:,} hours of {WINDOW_S} s windows "
        f"({dataset.first_hour:%Y-%m-%d %H:%M} .. {dataset.current_hour:%Y-%m-%d %H:%M} UTC) + '*' per hour ..."
    )
    fill(pg_url, dataset, migrations_dir)
    results: list[Latency] = []
    with pg_connect(pg_url, autocommit=True) as conn:
        plan = f"{runs.warmup:,} warm-up + {runs.measured:,} runs, {runs.result_format} results"
        say(f"round trip floor: prepared SELECT 1, {plan} ...")
        floor, _ = timed_runs(conn, "SELECT 1", lambda: None, runs)
        print(f"RESULT round trip (prepared SELECT 1): {Latency('SELECT 1', floor, 1).line()}", flush=True)
        for shape in SHAPES:
            say(f"{shape.name}: {plan}, parameters drawn per run ...")
            latency = measure(conn, shape, dataset, runs)
            results.append(latency)
            print(f"RESULT {shape.name}: {latency.line()}", flush=True)
        for shape in SHAPES:
            print(f"PLAN {shape.name}: {plan_summary(conn, shape, dataset)}", flush=True)
    print(
        f"\nclient wall time per query (execute + fetch all rows), prepared, {runs.result_format} results, "
        f"psycopg {psycopg.__version__}\n"
        f"| {'query':26} | {'rows':>7} | {'p50 ms':>7} | {'p95 ms':>7} | {'p99 ms':>7} | {'max ms':>8} "
        f"| {f'goal p95<{GOAL_P95_MS:g}ms':^13} | {f'seed p95<{SEED_P95_MS:g}ms':^13} |\n"
        f"|{'-' * 28}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 10}|{'-' * 15}|{'-' * 15}|",
    )
    for latency in results:
        print(verdict(latency))
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="station rows to fill (plus one '*' row per hour)")
    parser.add_argument("--stations", type=int, default=1_000, help="stations per hour (hours = rows / stations)")
    parser.add_argument("--runs", type=int, default=2_000, help="measured runs per query shape")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured runs per query shape before those")
    parser.add_argument(
        "--pg-url",
        default=None,
        help="server to create the database on (default: TRIBUTARY_TEST_PG_URL's, or a private cluster when none answers)",
    )
    parser.add_argument("--binary", action="store_true", help="fetch results in binary format (default: text)")
    parser.add_argument(
        "--migrations",
        type=Path,
        default=MIGRATIONS_DIR,
        help="migrations to apply (default: sql/migrations); a patched copy measures a schema change first",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards (its URL is printed)")
    args = parser.parse_args()
    if args.rows < 1 or args.stations < 1 or args.runs < 1 or args.warmup < 0:
        parser.error("--rows, --stations and --runs must be at least 1, --warmup at least 0")
    reason = None if args.pg_url is None else server_answers(args.pg_url, timeout=5)
    if reason is not None:
        parser.exit(
            2,
            f"PostgreSQL at {redact_url(args.pg_url)} does not answer ({reason}); start it, or pass --pg-url "
            "(or set TRIBUTARY_TEST_PG_URL) to a server where this user may create databases\n",
        )

    stations = min(args.stations, args.rows)
    dataset = Dataset(
        stations=stations,
        hours=max(1, args.rows // stations),
        current_hour=datetime.now(UTC).replace(minute=0, second=0, microsecond=0),
    )
    try:
        with (
            nullcontext(args.pg_url) if args.pg_url else bench_server() as server,
            throwaway_database(server, "weather", keep=args.keep) as pg_url,
        ):
            run(pg_url, dataset, Runs(args.warmup, args.runs, args.binary), args.migrations)
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
