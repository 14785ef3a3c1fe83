"""app_logs transformations: pure `DataFrame -> DataFrame` functions (streaming and backfill).

A Kafka record holds one log line in one of two shapes, told apart by its first character:

- `json`: an API log object, `{"timestamp", "method", "path", "status", "latency_ms", "bytes",
  "client_ip", "user_agent", "referrer", ...}`; the first four are required, other keys are ignored.
  `timestamp` is ISO-8601 (no zone: UTC), `latency_ms` milliseconds, `path` may carry the query.
- `combined`: Apache/nginx combined log format,
  `host ident user [10/Oct/2026:13:55:36 +0200] "GET /p?q=1 HTTP/1.1" status bytes "referrer" "agent"`,
  optionally followed by a quoted `"$http_x_forwarded_for"` (nginx's default `main` format; not
  kept) and then by nginx's `$request_time` in seconds (`0.043`), stored as `latency_ms` (43.0).

Decisions the raw table and the dashboards rely on:

- `bytes` '-' is 0 (Apache's CLF meaning: no body sent); a JSON line without `bytes` has null.
- `referrer` and `user_agent` '-' or '' are null; `\\"` and `\\\\` inside quoted fields are
  unescaped (Apache's escaping); nginx's `\\xHH` escapes stay as logged (decoding needs a UDF).
- `status_class` is '1xx'..'5xx'; `hour_of_day` is 0-23 and `weekday` ISO 1 (Monday)..7 (Sunday),
  both of the UTC event time whatever the session time zone.
- A target in absolute form (`GET http://host/p HTTP/1.1`, proxies and scanners) keeps its path.

Malformed input never raises (`try_*` functions only) and every rule has a name in `violations`.
A line that is too long (bytes), not text PostgreSQL can store (invalid UTF-8, or a NUL character,
raw or `\\u0000` in JSON), or in neither shape gets exactly one structural rule; the others are
checked field by field. Built-in functions only: no Python runs per line here.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from spark_jobs.validation import IP_PATTERN, all_of, failed
from tributary.catalog import AppLogRules, Pipeline

# Rule names, as stored in dead_letters.reasons and counted per batch.
RULE_LENGTH = "line_length"
RULE_UTF8 = "payload_utf8"
RULE_UNPARSEABLE = "unparseable_line"
RULE_REQUIRED = "required_fields"
RULE_REQUEST = "request_line"
RULE_METHOD = "method_valid"
RULE_PATH = "path_valid"
RULE_STATUS = "status_valid"
RULE_TS_PARSE = "timestamp_parseable"
RULE_TS_FUTURE = "timestamp_not_future"
RULE_IP = "client_ip_valid"
RULE_LATENCY = "latency_valid"
RULE_BYTES = "bytes_valid"

ALL_RULES = (
    RULE_LENGTH,
    RULE_UTF8,
    RULE_UNPARSEABLE,
    RULE_REQUIRED,
    RULE_REQUEST,
    RULE_METHOD,
    RULE_PATH,
    RULE_STATUS,
    RULE_TS_PARSE,
    RULE_TS_FUTURE,
    RULE_IP,
    RULE_LATENCY,
    RULE_BYTES,
)

FORMATS = ("combined", "json")
JSON_FIELDS = ("timestamp", "method", "path", "status", "latency_ms", "bytes", "client_ip", "user_agent", "referrer")
JSON_REQUIRED = ("timestamp", "method", "path", "status")

# Parsed log columns, in the order of the raw table `app_log_events` (which has browser, os and
# device between user_agent and hour_of_day: `enrich_user_agents` adds them there).
LOG_COLUMNS = (
    "topic",
    "kafka_partition",
    "kafka_offset",
    "kafka_timestamp",
    "event_ts",
    "source_format",
    "client_ip",
    "method",
    "path",
    "path_template",
    "status",
    "status_class",
    "latency_ms",
    "bytes",
    "referrer",
    "user_agent",
    "hour_of_day",
    "weekday",
)
UA_COLUMNS = ("browser", "os", "device")
# Every column of `app_log_events` a writer fills (ingested_at is the table's default).
RAW_COLUMNS = (*LOG_COLUMNS[: LOG_COLUMNS.index("user_agent") + 1], *UA_COLUMNS, "hour_of_day", "weekday")

# Combined format. Every group excludes \x01: a matched line is rewritten into its groups joined
# by \x01 with one regexp_replace and split once, about nine times faster than one
# regexp_extract per group. Possessive quantifiers: the grammar is unambiguous, so a line that
# does not match fails without backtracking.
_TOKEN = r"([^\s\x01]++)"
_QUOTED = r'"((?:[^"\\\x01]|\\[^\x01])*+)"'
COMBINED_PATTERN = (
    rf"^{_TOKEN} {_TOKEN} {_TOKEN} \[([^\]\x01]*+)\] {_QUOTED} {_TOKEN} {_TOKEN} {_QUOTED} {_QUOTED}"
    rf"(?: {_QUOTED})?(?: {_TOKEN})?$"
)
_GROUPS = ("host", "ident", "user", "time", "request", "status", "bytes", "referrer", "user_agent", "xff", "latency")
_SEPARATOR = "\x01"
_JOINED_GROUPS = "".join(f"{_SEPARATOR}${i}" for i in range(1, len(_GROUPS) + 1))
CLF_TIME_FORMAT = "dd/MMM/yyyy:HH:mm:ss Z"

_METHOD = r"^[A-Za-z]{1,32}$"
_STATUS = r"^[1-5][0-9][0-9]$"
_BYTES = r"^[0-9]{1,18}$"
_NUMBER = r"^[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?$"
_ABSOLUTE_URI_PREFIX = r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*"
_WHITESPACE = " \t\r\n"

_HEX = "[0-9a-fA-F]"
# Applied in this order: an email can hold digits and hex runs, a token can hold a hex run, and
# an all-digit segment is an id even when it is as long as a hash.
PATH_PLACEHOLDERS = (
    (r"(?<=/)[^/@]+@[^/@]+\.[^/@]+(?=/|$)", "{email}"),
    (rf"(?<=[/._-]){_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}(?=[/._-]|$)", "{uuid}"),
    # Opaque tokens (API keys, JWTs, reset links): 32+ URL-safe characters mixing digits, lower
    # and upper case letters, which slugs (lower case) and words do not.
    (r"(?<=/)(?=[^/]*[0-9])(?=[^/]*[a-z])(?=[^/]*[A-Z])[A-Za-z0-9_.=~-]{32,}(?=/|$)", "{token}"),
    (r"(?<=/)[0-9]+(?=/|$|\.[A-Za-z0-9]{1,8}$)", "{id}"),
    (rf"(?<=[/._-]){_HEX}{{16,}}(?=[/._-]|$)", "{hash}"),
)


def _absent_if_dash(text: Column) -> Column:
    """Null for '-' and '' (how both formats say "none")."""
    return F.when(~text.isin("-", ""), text)


def _unescape(quoted: Column) -> Column:
    """Apache's escaping of quoted fields undone in one left-to-right pass (so `\\\\"` is right)."""
    return F.when(quoted.contains("\\"), F.regexp_replace(quoted, r'\\(["\\])', "$1")).otherwise(quoted)


def template_path(path: Column) -> Column:
    """The endpoint a path belongs to: ids replaced by placeholders, query dropped, slashes tidied.

    `/api/users/123/` -> `/api/users/{id}`; also `{uuid}`, `{hash}` (16+ hex digits, also inside a
    file name like `app.{hash}.js`), `{email}` and `{token}`. Dashboards group by this, so the
    number of distinct values stays small whatever ids the traffic carries.
    """
    templated = F.substring_index(F.substring_index(path, "?", 1), "#", 1)
    templated = F.regexp_replace(templated, "/{2,}", "/")
    # Before the placeholders, whose patterns anchor at the end (`/{id}.jpg`).
    templated = F.regexp_replace(templated, "(?<=.)/$", "")
    for pattern, placeholder in PATH_PLACEHOLDERS:
        templated = F.regexp_replace(templated, pattern, placeholder)
    return templated


def status_class(status: Column) -> Column:
    """'1xx'..'5xx' for a status in 100-599, else null."""
    return F.when(status.between(100, 599), F.concat(F.floor(status / 100).cast("string"), F.lit("xx")))


def _utc_hour_and_weekday(event_ts: Column) -> tuple[Column, Column]:
    """Hour 0-23 and ISO weekday (1 = Monday) of the UTC time, by arithmetic on epoch seconds.

    `hour()` and `dayofweek()` would use the session time zone (and Sunday = 1).
    """
    seconds = F.unix_seconds(event_ts)
    second_of_day = F.pmod(seconds, F.lit(86_400))
    epoch_day = F.floor((seconds - second_of_day) / 86_400)
    hour = F.floor(second_of_day / 3_600).cast("smallint")
    weekday = (F.pmod(epoch_day + 3, F.lit(7)) + 1).cast("smallint")  # 1970-01-01 was a Thursday
    return hour, weekday


def _rules_of(pipeline: Pipeline) -> AppLogRules:
    rules = pipeline.validation
    if not isinstance(rules, AppLogRules):
        raise TypeError(f"pipeline {pipeline.name} does not carry app-log validation rules")
    unknown = sorted(set(rules.formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"pipeline {pipeline.name} names unknown log formats {unknown}; known: {list(FORMATS)}")
    return rules


def parse_log_lines(kafka_rows: DataFrame, pipeline: Pipeline) -> DataFrame:
    """Kafka records -> one row per record: the parsed line's fields plus `violations` (rule names).

    Input columns are those of the Kafka source (key, value, topic, partition, offset, timestamp).
    Output: `LOG_COLUMNS` with `query_string` after `path`, then `payload` and `violations`.
    A record is valid when `violations` is empty; its fields are then non-null where the raw
    table says NOT NULL. Lines of a format the catalog does not list are `unparseable_line`.
    """
    rules = _rules_of(pipeline)
    # Staged projections: each expensive expression (UTF-8 check, JSON parse, the combined regex,
    # the request split) is computed once in its own projection, and later stages read columns.
    # (The optimizer does not merge a projection into a consumer that would repeat it.)
    too_long = F.coalesce(F.octet_length("value") > rules.max_line_length, F.lit(False))
    rows = kafka_rows.select(
        F.col("topic"),
        F.col("partition").alias("kafka_partition"),
        F.col("offset").alias("kafka_offset"),
        F.col("timestamp").alias("kafka_timestamp"),
        F.col("value").alias("payload"),
        too_long.alias("_too_long"),
        # A line over the limit is not even decoded: its rule is decided by its length alone.
        F.when(~too_long, F.try_validate_utf8(F.col("value").cast("string"))).alias("_text"),
    )
    rows = rows.select("*", F.btrim("_text", F.lit(_WHITESPACE)).alias("_line"))
    line = F.col("_line")
    rows = rows.select(
        "*",
        F.when(line.startswith("{"), F.lit("json")).when(line.isNotNull(), F.lit("combined")).alias("source_format"),
        # PostgreSQL text cannot hold NUL: one in a stored field would fail the whole COPY.
        (line.contains("\x00") | (line.startswith("{") & line.contains("\\u0000"))).alias("_has_nul"),
    )
    is_json = F.col("source_format") == "json"
    rows = rows.select(
        "*",
        F.when(is_json & F.lit("json" in rules.formats), F.try_parse_json("_line")).alias("_doc"),
        F.when(
            (F.col("source_format") == "combined") & F.lit("combined" in rules.formats),
            F.regexp_replace("_line", COMBINED_PATTERN, _JOINED_GROUPS),
        ).alias("_joined"),
    )
    as_fields = "struct<" + ", ".join(f"`{name}`: variant" for name in JSON_FIELDS) + ">"
    rows = rows.select(
        "*",
        F.try_variant_get("_doc", "$", as_fields).alias("_json"),
        # Rewritten means matched: a line holding \x01 cannot match, so none is mistaken for one.
        F.when(F.col("_joined") != F.col("_line"), F.split("_joined", _SEPARATOR)).alias("_groups"),
    )
    rows = rows.select("*", F.split(_unescape(_group("request")), " ").alias("_request"))
    rows = rows.select("*", *_field_texts(is_json))
    rows = rows.select("*", *_typed_fields(is_json))
    rows = rows.select("*", F.substring_index("_origin", "?", 1).alias("path"), _query_string(F.col("_origin")))
    hour_of_day, weekday = _utc_hour_and_weekday(F.col("event_ts"))
    return rows.select(
        *LOG_COLUMNS[: LOG_COLUMNS.index("path") + 1],
        "query_string",
        template_path(F.col("path")).alias("path_template"),
        "status",
        status_class(F.col("status")).alias("status_class"),
        "latency_ms",
        "bytes",
        "referrer",
        "user_agent",
        hour_of_day.alias("hour_of_day"),
        weekday.alias("weekday"),
        "payload",
        _violations(rules).alias("violations"),
    )


def _group(name: str) -> Column:
    """A combined-format group: element n + 1 of the split (the rewritten line starts with \\x01)."""
    return F.try_element_at("_groups", F.lit(_GROUPS.index(name) + 2))


def _field_texts(is_json: Column) -> list[Column]:
    """One text column per field from whichever format the line has (null when absent), plus
    `_parsed` (the line matched its format) and `_request_ok`."""

    def json_text(name: str) -> Column:
        return F.try_variant_get(F.col(f"_json.`{name}`"), "$", "string")

    def pick(json_value: Column, combined_value: Column) -> Column:
        return F.when(is_json, json_value).otherwise(combined_value)

    request = F.col("_request")
    parts = F.size(request)
    protocol = F.try_element_at(request, F.lit(3))
    # METHOD TARGET, or METHOD TARGET HTTP/x (nginx logs "-" or raw bytes when there was none).
    request_ok = F.coalesce((parts == 2) | ((parts == 3) & protocol.startswith("HTTP/")), F.lit(False))
    return [
        pick(F.col("_json").isNotNull(), F.col("_groups").isNotNull()).alias("_parsed"),
        pick(F.lit(True), request_ok).alias("_request_ok"),
        pick(json_text("timestamp"), _group("time")).alias("_timestamp"),
        pick(json_text("method"), F.when(request_ok, F.try_element_at(request, F.lit(1)))).alias("method"),
        pick(json_text("path"), F.when(request_ok, F.try_element_at(request, F.lit(2)))).alias("_target"),
        pick(json_text("status"), _group("status")).alias("_status"),
        pick(json_text("bytes"), _group("bytes")).alias("_bytes"),
        _absent_if_dash(pick(json_text("latency_ms"), _group("latency"))).alias("_latency"),
        _absent_if_dash(pick(json_text("client_ip"), _group("host"))).alias("client_ip"),
        _absent_if_dash(pick(json_text("referrer"), _unescape(_group("referrer")))).alias("referrer"),
        _absent_if_dash(pick(json_text("user_agent"), _unescape(_group("user_agent")))).alias("user_agent"),
    ]


def _typed_fields(is_json: Column) -> list[Column]:
    """Typed values of the field texts (null where a text does not parse), and `_origin`: the
    request target in origin form (`/path?query`)."""
    target = F.col("_target")
    after_authority = F.regexp_replace(target, _ABSOLUTE_URI_PREFIX, "")
    origin = (
        F.when(target.startswith("/") | (target == "*"), target)
        .when(
            target.rlike(_ABSOLUTE_URI_PREFIX),
            F.when(after_authority.startswith("/"), after_authority).otherwise(F.concat(F.lit("/"), after_authority)),
        )
        .otherwise(target)
    )
    timestamp, status, size, latency = F.col("_timestamp"), F.col("_status"), F.col("_bytes"), F.col("_latency")
    latency_number = F.when(latency.rlike(_NUMBER), latency.try_cast("double"))
    return [
        origin.alias("_origin"),
        F.when(is_json, F.try_to_timestamp(timestamp))
        .otherwise(F.try_to_timestamp(timestamp, F.lit(CLF_TIME_FORMAT)))
        .alias("event_ts"),
        F.when(status.rlike(_STATUS), status.try_cast("int")).alias("status"),
        F.when(size == "-", F.lit(0).cast("bigint")).when(size.rlike(_BYTES), size.try_cast("bigint")).alias("bytes"),
        # nginx's $request_time is in seconds (ms resolution); rounding drops float noise (43.000000001).
        F.when(is_json, latency_number).otherwise(F.round(latency_number * 1000, 3)).alias("latency_ms"),
    ]


def _query_string(origin: Column) -> Column:
    """What follows the first '?' of the target; null when there is none or it is empty."""
    return F.nullif(F.try_element_at(F.split(origin, r"\?", 2), F.lit(2)), F.lit("")).alias("query_string")


def _violations(rules: AppLogRules) -> Column:
    """Rule names the row fails: one structural rule, or every failed field rule.

    A field rule judges a field only when the line has it; a missing JSON field is
    `required_fields` and an unreadable combined request line is `request_line`, once.
    """

    def when_present(text: str, passes: Column) -> Column:
        return F.col(text).isNull() | passes

    event_ts, kafka_ts, path = F.col("event_ts"), F.col("kafka_timestamp"), F.col("path")
    # The columns the required JSON fields were read into; the combined pattern requires them all.
    text_of = {"timestamp": "_timestamp", "method": "method", "path": "_target", "status": "_status"}
    required_texts = [text_of[name] for name in JSON_REQUIRED]
    field_rules = [
        failed(
            RULE_REQUIRED,
            (F.col("source_format") != "json") | all_of(F.col(text).isNotNull() for text in required_texts),
        ),
        failed(RULE_REQUEST, F.col("_request_ok")),
        failed(RULE_METHOD, when_present("method", F.col("method").rlike(_METHOD))),
        failed(RULE_PATH, when_present("_target", path.startswith("/") | (path == "*"))),
        failed(RULE_STATUS, when_present("_status", F.col("status").isNotNull())),
        failed(RULE_TS_PARSE, when_present("_timestamp", event_ts.isNotNull())),
        # Compared with the broker's timestamp, not the clock, so a backfill decides the same.
        failed(
            RULE_TS_FUTURE,
            event_ts.isNull()
            | kafka_ts.isNull()
            | (event_ts <= kafka_ts + F.make_interval(secs=F.lit(rules.max_future_skew_s))),
        ),
        failed(RULE_IP, when_present("client_ip", F.col("client_ip").rlike(IP_PATTERN))),
        failed(RULE_LATENCY, when_present("_latency", F.col("latency_ms").isNotNull())),
        failed(RULE_BYTES, when_present("_bytes", F.col("bytes").isNotNull())),
    ]
    return (
        F.when(F.col("_too_long"), F.array(F.lit(RULE_LENGTH)))
        .when(F.col("_text").isNull() | F.col("_has_nul"), F.array(F.lit(RULE_UTF8)))
        .when(~F.col("_parsed"), F.array(F.lit(RULE_UNPARSEABLE)))
        .otherwise(F.array_compact(F.array(*field_rules)))
    )


def valid_logs(parsed: DataFrame) -> DataFrame:
    """Lines that passed every rule, with `LOG_COLUMNS` (the raw table's, before UA enrichment)."""
    return parsed.where(F.size("violations") == 0).select(*LOG_COLUMNS)
