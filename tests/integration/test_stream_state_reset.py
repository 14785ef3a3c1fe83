"""`make up` with a fresh memory-only broker clears the stream state keyed by the old offsets."""

from __future__ import annotations

from pathlib import Path

import pytest

from tributary.catalog import PLATFORM, USER_EVENTS
from tributary.clients import pg_connect
from tributary.migrations import apply_migrations
from tributary.platform import reset_stream_state
from tributary.settings import Settings

pytestmark = pytest.mark.integration


def test_rows_of_the_old_run_are_gone_users_stay(settings: Settings) -> None:
    apply_migrations(settings.pg_url)
    checkpoint = settings.checkpoint_root + "/user_events/events"
    Path(checkpoint).mkdir(parents=True)
    with pg_connect(settings.pg_url) as conn:
        conn.execute("INSERT INTO users (user_id, name, email, region, segment) VALUES (1, 'a', 'a@x', 'eu', 'new')")
        conn.execute(
            f"INSERT INTO {USER_EVENTS.tables.state} (user_id, bucket_start, event_count, products, action_counts, "
            "first_event_ts, last_event_ts) VALUES (1, now(), 1, '{7}', '{1,0,0,0,0,0,0,0}', now(), now())"
        )
        conn.execute(
            f"INSERT INTO {PLATFORM.watermarks_table} (job_name, query_name, max_event_ts) "
            "VALUES ('user_events', 'events.windows', now())"
        )
        conn.commit()
    said: list[str] = []
    reset_stream_state(settings, said.append)
    with pg_connect(settings.pg_url) as conn:
        counts = [
            conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
            for table in ("users", USER_EVENTS.tables.state, PLATFORM.watermarks_table)
        ]
    assert counts == [1, 0, 0]
    assert any("clearing stream state" in line for line in said)
    assert not Path(settings.checkpoint_root).exists()
