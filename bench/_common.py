"""What the benchmarks share: progress lines, the PostgreSQL server they use, throwaway databases.

Benchmarks create their databases on the server the integration tests use (TRIBUTARY_TEST_PG_URL,
default the local server with trust authentication), never in the `make up` stack's database.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tributary.stack.postgres import (
    database_name,
    database_url,
    drop_database,
    ensure_database,
    redact_url,
    scratch_server,
)

DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def say(message: str) -> None:
    """A timestamped progress line, flushed at once (figures are printed as `RESULT ...` lines)."""
    print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)


@contextmanager
def bench_server() -> Iterator[str]:
    """URL of the maintenance database of the server benchmarks use: TRIBUTARY_TEST_PG_URL's (as the
    tests), or, when nothing answers there, a private cluster that lives as long as the run."""
    with scratch_server(
        os.environ.get("TRIBUTARY_TEST_PG_URL"), DEFAULT_SERVER_URL, setting="TRIBUTARY_TEST_PG_URL"
    ) as url:
        yield url


def bench_database_url(server: str, tag: str) -> str:
    """URL of a new database `tributary_bench_<tag>_<hex>` on the server of `server` (not created)."""
    return database_url(server, f"tributary_bench_{tag}_{uuid.uuid4().hex[:6]}")


@contextmanager
def throwaway_database(server: str, tag: str, *, keep: bool = False) -> Iterator[str]:
    """A fresh database on `server`, dropped on the way out (errors and Ctrl-C too) unless `keep`."""
    url = bench_database_url(server, tag)
    name = database_name(url)
    ensure_database(url)
    say(f"database {name} created on {redact_url(server)}")
    try:
        yield url
    finally:
        if keep:
            say(f"kept database: {redact_url(url)} (drop it with: DROP DATABASE {name})")
        else:
            drop_database(url)
            say(f"database {name} dropped")
