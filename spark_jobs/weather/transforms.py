"""weather transformations: pure `DataFrame -> DataFrame` functions (streaming and backfill).

Readings are validated against the catalog's physical bounds, then averaged per station and
overall over the catalog's hourly windows (`hourly_summary`, `overall_summary`), or summed into
the summary table's stored columns (`summary_sums`, which the backfill writes). Nothing here
reads or writes outside Spark.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from spark_jobs.validation import all_of, failed, storable_json_text
from tributary.catalog import Pipeline, WeatherRules, Window

RULE_UTF8 = "payload_utf8"
RULE_JSON = "json_object"
RULE_REQUIRED = "required_fields"
RULE_STATION = "station_id_present"
RULE_TS_PARSE = "timestamp_parseable"
RULE_TS_FUTURE = "timestamp_not_future"
RULE_TEMPERATURE = "temperature_range"
RULE_HUMIDITY = "humidity_range"
RULE_WIND = "wind_speed_range"
RULE_PRESSURE = "pressure_type"

ALL_RULES = (
    RULE_UTF8,
    RULE_JSON,
    RULE_REQUIRED,
    RULE_STATION,
    RULE_TS_PARSE,
    RULE_TS_FUTURE,
    RULE_TEMPERATURE,
    RULE_HUMIDITY,
    RULE_WIND,
    RULE_PRESSURE,
)

READING_COLUMNS = (
    "topic",
    "kafka_partition",
    "kafka_offset",
    "kafka_timestamp",
    "event_ts",
    "station_id",
    "temperature",
    "humidity",
    "wind_speed",
    "pressure",
    "location",
)
MEASURES = ("temperature", "humidity", "wind_speed")
# The summary row over every station of a window.
ALL_STATIONS = "*"
# The stored columns of the summary table, in its order (the averages are generated from them).
SUMMARY_KEY = ("station_id", "window_seconds", "window_start")
SUMMARY_COLUMNS = (
    *SUMMARY_KEY,
    "reading_count",
    *(f"{stat}_{m}" for m in MEASURES for stat in ("sum", "min", "max")),
)
# Sums are added up as decimals: exact, so the same readings give the same bits whatever the
# order Spark adds them in (18 places hold every double of the catalog's bounds as it prints).
_EXACT_SUM = "decimal(38,18)"
# schema_of_variant names of JSON numbers: integers, decimals (12.5 is DECIMAL(3,1)), doubles.
_NUMBER_TYPE = r"^(TINYINT|SMALLINT|INT|BIGINT|FLOAT|DOUBLE|DECIMAL)"
_MAX_STATION_ID = 64


def parse_readings(kafka_rows: DataFrame, pipeline: Pipeline) -> DataFrame:
    """Kafka records -> one row per record: typed reading fields plus `violations` (rule names).

    Numbers must be JSON numbers (a quoted "21.5" is a type error, reported as the field's range
    rule); the timestamp an ISO-8601 string. Malformed input never raises: `try_*` functions only.
    """
    rules = pipeline.validation
    if not isinstance(rules, WeatherRules):
        raise TypeError(f"pipeline {pipeline.name} does not carry weather validation rules")
    names = [f.name for f in pipeline.schema]
    text = F.col("value").cast("string")
    utf8_ok = storable_json_text(F.col("value"))
    carried = ["topic", "kafka_partition", "kafka_offset", "kafka_timestamp", "payload"]
    # Staged projections: parse once, pull each field once, then apply the rules to columns.
    parsed = kafka_rows.select(
        F.col("topic"),
        F.col("partition").alias("kafka_partition"),
        F.col("offset").alias("kafka_offset"),
        F.col("timestamp").alias("kafka_timestamp"),
        F.col("value").alias("payload"),
        utf8_ok.alias("_utf8"),
        F.when(utf8_ok, F.try_parse_json(text)).alias("_doc"),
    )
    as_fields = "struct<" + ", ".join(f"`{name}`: variant" for name in names) + ">"
    parsed = parsed.select(
        *carried,
        "_utf8",
        F.coalesce(F.schema_of_variant("_doc").startswith("OBJECT"), F.lit(False)).alias("_object"),
        F.try_variant_get("_doc", "$", as_fields).alias("_f"),
    )
    field = {name: F.col(f"_f.`{name}`") for name in names}
    numbers = (*MEASURES, "pressure")
    parsed = parsed.select(
        *carried,
        "_utf8",
        "_object",
        *(F.try_variant_get(field[n], "$", "string").alias(f"_s_{n}") for n in names),
        *(
            F.coalesce(F.schema_of_variant(field[n]).rlike(_NUMBER_TYPE), F.lit(False)).alias(f"_num_{n}")
            for n in numbers
        ),
        *(F.try_variant_get(field[n], "$", "double").alias(f"_d_{n}") for n in numbers),
    )
    present = {n: F.col(f"_s_{n}").isNotNull() for n in names}
    parsed = parsed.select(
        *carried,
        "_utf8",
        "_object",
        *(f"_s_{n}" for n in names),
        F.try_to_timestamp("_s_timestamp").alias("event_ts"),
        *(F.when(F.col(f"_num_{n}"), F.col(f"_d_{n}")).alias(n) for n in numbers),
    )
    event_ts = F.col("event_ts")
    required = [f.name for f in pipeline.schema if f.required]

    def within(name: str, bounds: tuple[float, float]) -> Column:
        low, high = bounds
        return F.col(name).isNotNull() & (F.col(name) >= low) & (F.col(name) <= high)

    def when_present(name: str, passes: Column) -> Column:
        return ~present[name] | passes

    field_rules = [
        failed(RULE_REQUIRED, all_of(present[n] for n in required)),
        failed(
            RULE_STATION,
            when_present(
                "station_id",
                (F.length(F.trim("_s_station_id")) > 0)
                & (F.length("_s_station_id") <= _MAX_STATION_ID)
                # '*' names the all-stations row of the summary.
                & (F.col("_s_station_id") != ALL_STATIONS),
            ),
        ),
        failed(RULE_TS_PARSE, when_present("timestamp", event_ts.isNotNull())),
        failed(
            RULE_TS_FUTURE,
            event_ts.isNull()
            | (event_ts <= F.col("kafka_timestamp") + F.make_interval(secs=F.lit(rules.max_future_skew_s))),
        ),
        failed(RULE_TEMPERATURE, when_present("temperature", within("temperature", rules.temperature_c))),
        failed(RULE_HUMIDITY, when_present("humidity", within("humidity", rules.humidity_pct))),
        failed(RULE_WIND, when_present("wind_speed", within("wind_speed", rules.wind_speed_ms))),
        failed(RULE_PRESSURE, when_present("pressure", F.col("pressure").isNotNull())),
    ]
    violations = (
        F.when(~F.col("_utf8"), F.array(F.lit(RULE_UTF8)))
        .when(~F.col("_object"), F.array(F.lit(RULE_JSON)))
        .otherwise(F.array_compact(F.array(*field_rules)))
    )
    return parsed.select(
        *carried,
        "event_ts",
        F.col("_s_station_id").alias("station_id"),
        *MEASURES,
        "pressure",
        F.col("_s_location").alias("location"),
        violations.alias("violations"),
    ).select(*READING_COLUMNS, "payload", "violations")


def valid_readings(parsed: DataFrame) -> DataFrame:
    """Readings that passed every rule, with the raw table's columns."""
    return parsed.where(F.size("violations") == 0).select(*READING_COLUMNS)


def _stats() -> list[Column]:
    stats = [F.count("*").alias("reading_count")]
    for m in MEASURES:
        stats += [F.avg(m).alias(f"avg_{m}"), F.min(m).alias(f"min_{m}"), F.max(m).alias(f"max_{m}")]
    return stats


def hourly_summary(readings: DataFrame, window: Window) -> DataFrame:
    """Per station and window: count, average, min and max of every measure (event time).

    On a streaming DataFrame the watermark bounds lateness and state; on a batch DataFrame (the
    backfill) it is a no-op, so both compute the same windows from the same readings.
    """
    return (
        readings.withWatermark("event_ts", window.spark_watermark)
        .groupBy(F.window("event_ts", window.spark_duration).alias("w"), "station_id")
        .agg(*_stats())
        .select(
            F.col("w.start").alias("window_start"),
            F.lit(window.duration_s).alias("window_seconds"),
            "station_id",
            *_summary_values(),
        )
    )


def overall_summary(readings: DataFrame, window: Window) -> DataFrame:
    """The same statistics over all stations of a window (station_id `ALL_STATIONS`)."""
    return (
        readings.withWatermark("event_ts", window.spark_watermark)
        .groupBy(F.window("event_ts", window.spark_duration).alias("w"))
        .agg(*_stats())
        .select(
            F.col("w.start").alias("window_start"),
            F.lit(window.duration_s).alias("window_seconds"),
            F.lit(ALL_STATIONS).alias("station_id"),
            *_summary_values(),
        )
    )


def _summary_values() -> list[str]:
    return ["reading_count", *(f"{s}_{m}" for m in MEASURES for s in ("avg", "min", "max"))]


def summary_sums(readings: DataFrame, window: Window, *extra: Column) -> DataFrame:
    """Per station and window, and over all stations (`ALL_STATIONS`): the summary table's stored
    columns (`SUMMARY_COLUMNS`: count, sum, min and max of every measure), then `extra`.

    `extra` are further aggregates over the same groups (the backfill collects each window's late
    readings with its sums). One aggregation over grouping sets: every reading is read once, and
    the overall row agrees with the station rows. Batch DataFrames only (no watermark), tumbling
    windows only.
    """
    if window.slide_s is not None:
        raise ValueError(f"summary_sums needs a tumbling window, not {window.name}: a reading would count twice")
    stats = [F.count("*").alias("reading_count")]
    for m in MEASURES:
        stats += [
            F.sum(F.col(m).cast(_EXACT_SUM)).cast("double").alias(f"sum_{m}"),
            F.min(m).alias(f"min_{m}"),
            F.max(m).alias(f"max_{m}"),
        ]
    windowed = readings.withColumn("window_start", F.window("event_ts", window.spark_duration).start)
    grouped = windowed.groupingSets([["window_start", "station_id"], ["window_start"]], "window_start", "station_id")
    summed = grouped.agg(*stats, *extra)
    extra_names = summed.columns[2 + len(stats) :]
    return summed.select(
        # station_id is null only in the rows over all stations (the raw column is NOT NULL).
        F.coalesce("station_id", F.lit(ALL_STATIONS)).alias("station_id"),
        F.lit(window.duration_s).alias("window_seconds"),
        "window_start",
        *SUMMARY_COLUMNS[3:],
        *extra_names,
    )
