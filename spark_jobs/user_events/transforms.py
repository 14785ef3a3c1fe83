"""user_events transformations: pure `DataFrame -> DataFrame` functions.

The streaming job and the backfill job both call these, so a backfill reproduces exactly what
streaming wrote. Nothing here reads or writes outside Spark; every rule, window and threshold
comes from the catalog entry passed in.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window as SqlWindow

from spark_jobs.validation import IP_PATTERN, all_of, failed, storable_json_text
from tributary.catalog import AnomalyRules, Pipeline, UserEventRules, Window

# Rule names, as stored in dead_letters.reasons and counted per batch.
RULE_UTF8 = "payload_utf8"
RULE_JSON = "json_object"
RULE_REQUIRED = "required_fields"
RULE_USER_ID = "user_id_positive"
RULE_PRODUCT_ID = "product_id_positive"
RULE_ACTION = "action_allowed"
RULE_TS_PARSE = "timestamp_parseable"
RULE_TS_FUTURE = "timestamp_not_future"
RULE_LOCATION = "location_length"
RULE_STRING_LENGTH = "string_length"
RULE_IP = "ip_valid"

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

_INTEGER_TYPES = ("TINYINT", "SMALLINT", "INT", "BIGINT")

# Validated event columns, in the order of the raw table.
EVENT_COLUMNS = (
    "topic",
    "kafka_partition",
    "kafka_offset",
    "kafka_timestamp",
    "event_ts",
    "user_id",
    "product_id",
    "action",
    "device_id",
    "device_type",
    "location",
    "user_segment",
    "ip_address",
)
STRING_FIELDS = ("action", "device_id", "device_type", "location", "user_segment", "ip_address")


def parse_user_events(kafka_rows: DataFrame, pipeline: Pipeline) -> DataFrame:
    """Kafka records -> one row per record: typed event fields plus `violations` (rule names).

    Input columns are those of the Kafka source (key, value, topic, partition, offset, timestamp).
    A record is valid when `violations` is empty. Malformed input of any kind (binary, truncated
    JSON, wrong types, huge strings) yields violations, never an error: `try_*` functions only.
    """
    rules = pipeline.validation
    if not isinstance(rules, UserEventRules):
        raise TypeError(f"pipeline {pipeline.name} does not carry user-event validation rules")

    # Staged projections: the JSON is parsed once into `_doc`, every field is pulled out once, and
    # the rules only read those columns. (The optimizer does not merge a projection back into its
    # consumers when that would repeat an expensive expression such as parsing.)
    names = [f.name for f in pipeline.schema]
    text = F.col("value").cast("string")
    utf8_ok = storable_json_text(F.col("value"))
    position = [
        F.col("topic"),
        F.col("partition").alias("kafka_partition"),
        F.col("offset").alias("kafka_offset"),
        F.col("timestamp").alias("kafka_timestamp"),
        F.col("value").alias("payload"),
    ]
    carried = ["topic", "kafka_partition", "kafka_offset", "kafka_timestamp", "payload"]
    parsed = kafka_rows.select(*position, utf8_ok.alias("_utf8"), F.when(utf8_ok, F.try_parse_json(text)).alias("_doc"))
    as_fields = "struct<" + ", ".join(f"`{name}`: variant" for name in names) + ">"
    parsed = parsed.select(
        *carried,
        "_utf8",
        F.coalesce(F.schema_of_variant("_doc").startswith("OBJECT"), F.lit(False)).alias("_object"),
        F.try_variant_get("_doc", "$", as_fields).alias("_f"),
    )
    field = {name: F.col(f"_f.`{name}`") for name in names}
    parsed = parsed.select(
        *carried,
        "_utf8",
        "_object",
        *(F.try_variant_get(field[name], "$", "string").alias(f"_s_{name}") for name in names),
        *(F.schema_of_variant(field[name]).alias(f"_t_{name}") for name in ("user_id", "product_id", "timestamp")),
        F.try_variant_get(field["user_id"], "$", "bigint").alias("_user_id"),
        F.try_variant_get(field["product_id"], "$", "bigint").alias("_product_id"),
    )

    present = {name: F.col(f"_s_{name}").isNotNull() for name in names}
    strings = {name: F.col(f"_s_{name}") for name in STRING_FIELDS}
    is_integer = {name: F.col(f"_t_{name}").isin(*_INTEGER_TYPES) for name in ("user_id", "product_id", "timestamp")}
    parsed = parsed.select(
        *carried,
        "_utf8",
        "_object",
        *(f"_s_{name}" for name in names),
        F.when(present["timestamp"] & ~is_integer["timestamp"], F.try_to_timestamp("_s_timestamp")).alias("event_ts"),
        F.when(is_integer["user_id"], F.col("_user_id")).alias("user_id"),
        F.when(is_integer["product_id"], F.col("_product_id")).alias("product_id"),
    )
    event_ts, user_id, product_id = F.col("event_ts"), F.col("user_id"), F.col("product_id")
    required = [f.name for f in pipeline.schema if f.required]

    def when_present(name: str, passes: Column) -> Column:
        return ~present[name] | passes

    field_rules = [
        failed(RULE_REQUIRED, all_of(present[name] for name in required)),
        failed(RULE_USER_ID, when_present("user_id", user_id > 0)),
        failed(RULE_PRODUCT_ID, when_present("product_id", product_id > 0)),
        failed(RULE_ACTION, when_present("action", strings["action"].isin(*rules.allowed_actions))),
        failed(RULE_TS_PARSE, when_present("timestamp", event_ts.isNotNull())),
        # Compared with the broker's timestamp, not the clock, so a backfill decides the same.
        failed(
            RULE_TS_FUTURE,
            event_ts.isNull()
            | (event_ts <= F.col("kafka_timestamp") + F.make_interval(secs=F.lit(rules.max_future_skew_s))),
        ),
        failed(RULE_LOCATION, when_present("location", F.length(strings["location"]) <= rules.max_location_length)),
        failed(
            RULE_STRING_LENGTH,
            all_of(
                when_present(name, F.length(strings[name]) <= rules.max_string_length)
                for name in STRING_FIELDS
                if name != "location"
            ),
        ),
        failed(RULE_IP, when_present("ip_address", strings["ip_address"].rlike(IP_PATTERN))),
    ]
    violations = (
        F.when(~F.col("_utf8"), F.array(F.lit(RULE_UTF8)))
        .when(~F.col("_object"), F.array(F.lit(RULE_JSON)))
        .otherwise(F.array_compact(F.array(*field_rules)))
    )
    return parsed.select(
        *carried,
        "event_ts",
        "user_id",
        "product_id",
        *(strings[name].alias(name) for name in STRING_FIELDS),
        violations.alias("violations"),
    ).select(*EVENT_COLUMNS, "payload", "violations")


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
