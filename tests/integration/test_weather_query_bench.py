"""Smoke test of bench/weather_query.py: a tiny run against the real PostgreSQL server.

Only that the benchmark runs end to end (exit 0, a figure and a plan per query shape, the goal
table, its database dropped); the figures themselves are the benchmark's business, not a test's.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tributary.clients import pg_connect

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[2] / "bench" / "weather_query.py"
SHAPES = ("last hour, all stations", "last hour, overall ('*')", "station, 24 h", "station, 7 days")


def test_tiny_run_prints_every_figure_and_drops_its_database(pg_server_url: str) -> None:
    # 1,000 stations x 5 hours: every range query returns the 5 hours there are.
    result = subprocess.run(
        [sys.executable, str(BENCH), "--rows", "5000", "--runs", "50", "--warmup", "5", "--pg-url", pg_server_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert re.search(r"^RESULT fill .*: 5,005 rows in [\d.]+ s = [\d,]+ rows/s$", out, re.M), out
    expected_rows = dict.fromkeys(SHAPES, "5")
    expected_rows["last hour, all stations"] = "1,000"
    expected_rows["last hour, overall ('*')"] = "1"
    for shape in SHAPES:
        name = re.escape(shape)
        assert re.search(
            rf"^RESULT {name}: p50 [\d.]+ ms, p95 [\d.]+ ms, p99 [\d.]+ ms, max [\d.]+ ms "
            rf"\(50 runs, {expected_rows[shape]} rows each\)$",
            out,
            re.M,
        ), out
        assert re.search(rf"^PLAN {name}: .*, execution [\d.]+ ms$", out, re.M), out
        assert re.search(rf"^\| {name} +\|.*\| +(PASS|MISS) +\| +(PASS|MISS) +\|$", out, re.M), out
    dropped = re.search(r"database (tributary_bench_weather_\w+) dropped", out)
    assert dropped, out
    with pg_connect(pg_server_url) as conn:
        left = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dropped[1],)).fetchone()
    assert left is None, f"{dropped[1]} was not dropped"
