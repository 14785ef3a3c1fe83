"""How a weather batch lands: raw readings, late ones set aside, hourly sums added exactly once.

One statement per Spark partition, inside that partition's transaction:

1. the staged readings are inserted into the raw table by source position (`ON CONFLICT DO
   NOTHING ... RETURNING`), so only readings new to the table flow on: a replayed batch adds
   nothing twice;
2. new readings behind the watermark go to the late-readings table (kept for a backfill to fold
   in, and counted in the batch's heartbeat), not into the summary;
3. the on-time new readings are summed per station and window, and over all stations
   (`ALL_STATIONS`), and added to `weather_summary` (count, sums, min, max; the averages are
   generated columns).

The watermark is the newest event time of earlier batches minus the allowed lateness, read by
the driver before the batch, so every partition (and every replay) of a batch uses the same one.
Summary rows are updated in (station, window) order, '*' first, so partitions writing at the same
time wait for each other instead of deadlocking.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
from psycopg import sql

from spark_jobs.sinks.copy_lines import copy_payload
from spark_jobs.sinks.partition_writer import LINE, RawBatchWrite
from spark_jobs.sinks.postgres import PostgresBatch, epoch_window_start
from spark_jobs.weather.transforms import ALL_STATIONS, MEASURES


def merge_statement(
    raw_table: str, raw_columns: tuple[str, ...], stage: str, summary_table: str, late_table: str
) -> sql.Composed:
    """The statement of steps 1-3; parameters `watermark` (timestamptz or None) and `seconds`.

    Returns one row: (readings new to the raw table, of those late, summary rows touched).
    """
    sums = sql.SQL(", ").join(
        sql.SQL("sum({m}) AS {s}, min({m}) AS {lo}, max({m}) AS {hi}").format(
            m=sql.Identifier(m),
            s=sql.Identifier(f"sum_{m}"),
            lo=sql.Identifier(f"min_{m}"),
            hi=sql.Identifier(f"max_{m}"),
        )
        for m in MEASURES
    )
    overall = sql.SQL(", ").join(
        sql.SQL("sum({s}), min({lo}), max({hi})").format(
            s=sql.Identifier(f"sum_{m}"), lo=sql.Identifier(f"min_{m}"), hi=sql.Identifier(f"max_{m}")
        )
        for m in MEASURES
    )
    stat_columns = [f"{kind}_{m}" for m in MEASURES for kind in ("sum", "min", "max")]
    combine = {
        "sum": "{t}.{c} + EXCLUDED.{c}",
        "min": "least({t}.{c}, EXCLUDED.{c})",
        "max": "greatest({t}.{c}, EXCLUDED.{c})",
    }
    updates = sql.SQL(", ").join(
        sql.SQL("{c} = " + combine[c.split("_", 1)[0]]).format(c=sql.Identifier(c), t=sql.Identifier(summary_table))
        for c in stat_columns
    )
    return sql.SQL(
        """
WITH new AS (
    INSERT INTO {raw} ({raw_columns}) SELECT {raw_columns} FROM {stage}
    ON CONFLICT DO NOTHING
    RETURNING topic, kafka_partition, kafka_offset, event_ts, station_id, temperature, humidity, wind_speed
), late AS (
    INSERT INTO {late} (topic, kafka_partition, kafka_offset, event_ts, station_id, watermark)
    SELECT topic, kafka_partition, kafka_offset, event_ts, station_id, %(watermark)s::timestamptz
    FROM new WHERE event_ts < %(watermark)s::timestamptz
    ON CONFLICT DO NOTHING
    RETURNING 1
), per_station AS (
    SELECT station_id, {window_start} AS window_start,
           count(*) AS reading_count, {sums}
    FROM new
    WHERE %(watermark)s::timestamptz IS NULL OR event_ts >= %(watermark)s::timestamptz
    GROUP BY 1, 2
), windows AS (
    SELECT * FROM per_station
    UNION ALL
    SELECT {all_stations}, window_start, sum(reading_count), {overall} FROM per_station GROUP BY window_start
), merged AS (
    INSERT INTO {summary} (station_id, window_seconds, window_start, reading_count, {stat_columns})
    SELECT station_id, %(seconds)s, window_start, reading_count, {stat_columns} FROM windows
    ORDER BY station_id, window_start
    ON CONFLICT (station_id, window_seconds, window_start) DO UPDATE SET
        reading_count = {summary}.reading_count + EXCLUDED.reading_count, {updates}, updated_at = now()
    RETURNING 1
)
SELECT (SELECT count(*) FROM new), (SELECT count(*) FROM late), (SELECT count(*) FROM merged)
"""
    ).format(
        raw=sql.Identifier(raw_table),
        raw_columns=sql.SQL(", ").join(map(sql.Identifier, raw_columns)),
        stage=sql.Identifier(stage),
        late=sql.Identifier(late_table),
        summary=sql.Identifier(summary_table),
        window_start=epoch_window_start("event_ts"),
        sums=sums,
        overall=overall,
        all_stations=sql.Literal(ALL_STATIONS),
        stat_columns=sql.SQL(", ").join(map(sql.Identifier, stat_columns)),
        updates=updates,
    )


@dataclass(frozen=True)
class WeatherBatchWrite(RawBatchWrite):
    """A `RawBatchWrite` whose raw merge also sets late readings aside and adds to the summary."""

    summary_table: str = "weather_summary"
    late_table: str = "weather_late_readings"
    window_seconds: int = 3600
    watermark: datetime | None = None

    def merge_raw(self, batch: PostgresBatch, raw: pa.Table) -> tuple[int, int]:
        stage = batch.stage(self.raw, copy_payload(raw.column(LINE)))
        new, late, _windows = batch.query_one(
            merge_statement(self.raw.table, self.raw.columns, stage, self.summary_table, self.late_table),
            {"watermark": self.watermark, "seconds": self.window_seconds},
            self.raw.table,
        )
        return int(new), int(late)
