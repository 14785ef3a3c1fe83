"""Per-minute request statistics of the app logs, recomputed from the raw table.

The p95 latency of a minute cannot be added up batch by batch, so the statistics of every minute
a batch touched are recomputed from all of that minute's stored rows once the batch's rows are
committed, and upserted. That is exact whenever rows arrive (late lines just update their
minute again) and a replayed batch recomputes the same values. Rows are per endpoint (method +
path template) and, with method and path '*', over every request of the minute.
"""

from __future__ import annotations

from datetime import UTC, datetime

from psycopg import sql

from spark_jobs.sinks.postgres import epoch_window_start

ALL = "*"


def minute_stats_statement(raw_table: str, stats_table: str) -> sql.Composed:
    """Upsert of the statistics of the minutes in `minutes` (timestamptz[]); parameters
    `seconds` (the window length), `minutes`, `low` and `high` (the range they span, for the index)."""
    return sql.SQL(
        """
INSERT INTO {stats} (minute_start, method, path_template, requests, errors_4xx, errors_5xx,
                     p95_latency_ms, avg_latency_ms, bytes)
SELECT minute_start, coalesce(method, {all}), coalesce(path_template, {all}), count(*),
       count(*) FILTER (WHERE status BETWEEN 400 AND 499),
       count(*) FILTER (WHERE status >= 500),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms),
       avg(latency_ms),
       coalesce(sum(bytes), 0)
FROM (
    SELECT {window_start} AS minute_start,
           method, path_template, status, latency_ms, bytes
    FROM {raw}
    WHERE event_ts >= %(low)s AND event_ts < %(high)s
) AS rows
WHERE minute_start = ANY(%(minutes)s)
GROUP BY GROUPING SETS ((minute_start, method, path_template), (minute_start))
ON CONFLICT (minute_start, method, path_template) DO UPDATE SET
    requests = EXCLUDED.requests, errors_4xx = EXCLUDED.errors_4xx, errors_5xx = EXCLUDED.errors_5xx,
    p95_latency_ms = EXCLUDED.p95_latency_ms, avg_latency_ms = EXCLUDED.avg_latency_ms,
    bytes = EXCLUDED.bytes, updated_at = now()
"""
    ).format(
        stats=sql.Identifier(stats_table),
        raw=sql.Identifier(raw_table),
        all=sql.Literal(ALL),
        window_start=epoch_window_start("event_ts"),
    )


def minute_stats_params(touched: list[int], seconds: int) -> dict[str, object]:
    """The statement's parameters for window starts given in epoch seconds."""
    minutes = [datetime.fromtimestamp(s, UTC) for s in sorted(touched)]
    return {
        "seconds": seconds,
        "minutes": minutes,
        "low": minutes[0],
        "high": datetime.fromtimestamp(max(touched) + seconds, UTC),
    }
