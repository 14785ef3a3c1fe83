"""user_events transformations: pure `DataFrame -> DataFrame` functions.

The streaming job and the backfill job both call these, so a backfill reproduces exactly what
streaming wrote. Nothing here reads or writes outside Spark; every rule, window and threshold
comes from the catalog entry passed in.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window as SqlWindow

from spark_jobs.user_events.parse import (
    EVENT_COLUMNS,
    PARSED_DDL,
    RULE_ACTION,
    RULE_IP,
    RULE_JSON,
    RULE_LOCATION,
    RULE_PRODUCT_ID,
    RULE_REQUIRED,
    RULE_STRING_LENGTH,
    RULE_TS_FUTURE,
    RULE_TS_PARSE,
    RULE_USER_ID,
    RULE_UTF8,
    UserEventParser,
)
from tributary.catalog import AnomalyRules, Pipeline, Window

# The rule names and event columns are defined with the parser; they are part of this module's API.
__all__ = [
    "ALL_RULES",
    "EVENT_COLUMNS",
    "RULE_ACTION",
    "RULE_IP",
    "RULE_JSON",
    "RULE_LOCATION",
    "RULE_PRODUCT_ID",
    "RULE_REQUIRED",
    "RULE_STRING_LENGTH",
    "RULE_TS_FUTURE",
    "RULE_TS_PARSE",
    "RULE_USER_ID",
    "RULE_UTF8",
    "activity_windows",
    "dead_letters",
    "enrich_with_users",
    "parse_user_events",
    "score_anomalies",
    "valid_events",
    "violation_counts",
]

ALL_RULES = (
    RULE_UTF8,
    RULE_JSON,
    RULE_REQUIRED,
    RULE_USER_ID,
    RULE_PRODUCT_ID,
    RULE_ACTION,
    RULE_TS_PARSE,
    RULE_TS_FUTURE,
    RULE_LOCATION,
    RULE_STRING_LENGTH,
    RULE_IP,
)


def parse_user_events(kafka_rows: DataFrame, pipeline: Pipeline) -> DataFrame:
    """Kafka records -> one row per record: typed event fields plus `violations` (rule names).

    Input columns are those of the Kafka source (key, value, topic, partition, offset, timestamp).
    A record is valid when `violations` is empty. Malformed input of any kind (binary, truncated
    JSON, wrong types, huge strings) yields violations, never an error. The rules are those of
    `UserEventParser` (`parse.py`), which the streaming job also runs inside its batch writer.
    """
    return kafka_rows.mapInArrow(UserEventParser(pipeline), PARSED_DDL)


def valid_events(parsed: DataFrame) -> DataFrame:
    """Rows that passed every rule, with the raw table's columns."""
    return parsed.where(F.size("violations") == 0).select(*EVENT_COLUMNS)


def dead_letters(parsed: DataFrame, pipeline_name: str) -> DataFrame:
    """Rows that failed a rule: source position, raw payload and the names of all failed rules."""
    return parsed.where(F.size("violations") > 0).select(
        "topic",
        "kafka_partition",
        "kafka_offset",
        F.lit(pipeline_name).alias("pipeline"),
        "kafka_timestamp",
        "payload",
        F.col("violations").alias("reasons"),
    )


def violation_counts(parsed: DataFrame) -> DataFrame:
    """(rule, records) for the rules failed in `parsed`; a record failing two rules counts twice."""
    return parsed.select(F.explode("violations").alias("rule")).groupBy("rule").agg(F.count("*").alias("records"))


def enrich_with_users(events: DataFrame, users: DataFrame) -> DataFrame:
    """Adds `user_name` and `region` from the users table (null for users not in it)."""
    lookup = users.select("user_id", F.col("name").alias("user_name"), "region")
    return events.join(F.broadcast(lookup), on="user_id", how="left")


def activity_windows(events: DataFrame, window: Window, actions: tuple[str, ...]) -> DataFrame:
    """Per-user activity in event-time windows, with the window's watermark.

    On a streaming DataFrame the watermark bounds state and lateness; on a batch DataFrame (the
    backfill) it is a no-op, so both compute the same windows from the same events.
    """
    if window.spark_slide is None:
        bucket = F.window("event_ts", window.spark_duration)
    else:
        bucket = F.window("event_ts", window.spark_duration, window.spark_slide)
    per_action = [F.sum(F.when(F.col("action") == a, 1).otherwise(0)).alias(f"_n_{a}") for a in actions]
    grouped = (
        events.withWatermark("event_ts", window.spark_watermark)
        .groupBy(bucket.alias("w"), "user_id")
        .agg(
            F.count("*").alias("event_count"),
            F.collect_set("product_id").alias("_products"),
            F.min("event_ts").alias("first_event_ts"),
            F.max("event_ts").alias("last_event_ts"),
            *per_action,
        )
    )
    counts = F.create_map(*[part for a in actions for part in (F.lit(a), F.col(f"_n_{a}"))])
    return grouped.select(
        "user_id",
        F.col("w.start").alias("window_start"),
        F.lit(window.duration_s).alias("window_seconds"),
        "event_count",
        F.size("_products").alias("distinct_products"),
        F.map_filter(counts, lambda _, n: n > 0).alias("action_counts"),
        "first_event_ts",
        "last_event_ts",
    )


def score_anomalies(closed_windows: DataFrame, rules: AnomalyRules) -> DataFrame:
    """Anomalous (user, window) rows among *closed* windows, with z-score, rule and severity.

    The z-score compares a user's count with the *other* users of the same window (leave-one-out
    mean and standard deviation), so one huge burst cannot hide itself by inflating the mean.
    The deviation is floored at one event: counts are integers, and a window where every other
    user did exactly the same would otherwise divide by zero.
    Input: `activity_windows` rows of complete windows (all users of a window in one DataFrame).
    """
    by_window = SqlWindow.partitionBy("window_start", "window_seconds")
    x = F.col("event_count").cast("double")
    users = F.count("*").over(by_window)
    total = F.sum(x).over(by_window)
    total_sq = F.sum(x * x).over(by_window)
    others = users - 1
    mean_others = (total - x) / others
    var_others = (total_sq - x * x) / others - mean_others * mean_others
    std_others = F.greatest(F.sqrt(F.greatest(var_others, F.lit(0.0))), F.lit(1.0))
    zscore = F.when(users >= rules.min_users_for_zscore, (x - mean_others) / std_others)

    scored = closed_windows.select("*", F.round(zscore, 4).alias("zscore"))
    over_threshold = F.col("event_count") > rules.count_threshold
    over_zscore = F.coalesce(F.col("zscore") > rules.zscore_limit, F.lit(False))
    ratio = F.greatest(
        F.col("event_count") / F.lit(float(rules.count_threshold)),
        F.coalesce(F.col("zscore") / F.lit(rules.zscore_limit), F.lit(0.0)),
    )
    return scored.where(over_threshold | over_zscore).select(
        "*",
        F.when(over_threshold & over_zscore, "threshold+zscore")
        .when(over_threshold, "threshold")
        .otherwise("zscore")
        .alias("rule"),
        F.when(ratio >= rules.critical_factor, "critical")
        .when(ratio >= rules.high_factor, "high")
        .otherwise("medium")
        .alias("severity"),
    )
