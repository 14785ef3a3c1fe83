"""The pipeline catalog: one declarative description of every pipeline.

Streaming jobs, DAGs, provisioning, reconciliation and the UI all read names, windows, thresholds
and limits from here; nothing else spells a topic, table or index name. (The SQL migrations create
the tables; `tests/integration/test_migrations.py` checks that every table named here exists.)

Adding a pipeline is one `Pipeline` entry in `PIPELINES` plus its transformation functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from types import MappingProxyType
from typing import Any, Literal

FieldType = Literal["long", "double", "string", "timestamp"]
CleanupPolicy = Literal["delete", "compact", "compact,delete"]
DataLossPolicy = Literal["fail", "record"]

DAY_MS = 24 * 60 * 60 * 1000


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class Topic:
    """A Kafka topic and the configs it is created with.

    Configs are always set explicitly, so a topic is the same on every broker whatever the
    broker's defaults.
    """

    name: str
    partitions: int
    retention_ms: int
    cleanup_policy: CleanupPolicy = "delete"

    def configs(self) -> dict[str, str]:
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": self.cleanup_policy}


@dataclass(frozen=True)
class MessageField:
    """One field of a pipeline's input message."""

    name: str
    type: FieldType
    required: bool = True


@dataclass(frozen=True)
class Window:
    """An event-time window; `slide_s` None means tumbling."""

    duration_s: int
    watermark_s: int
    slide_s: int | None = None

    @property
    def name(self) -> str:
        return f"{self.duration_s}s" if self.slide_s is None else f"{self.duration_s}s/{self.slide_s}s"

    @property
    def spark_duration(self) -> str:
        return f"{self.duration_s} seconds"

    @property
    def spark_slide(self) -> str | None:
        return None if self.slide_s is None else f"{self.slide_s} seconds"

    @property
    def spark_watermark(self) -> str:
        return f"{self.watermark_s} seconds"


@dataclass(frozen=True)
class Index:
    """An Elasticsearch index family: one index per day, created from one index template."""

    base: str
    mappings: Mapping[str, Any]
    retention_days: int
    shards: int = 1
    replicas: int = 0

    @property
    def template_name(self) -> str:
        return self.base

    @property
    def pattern(self) -> str:
        return f"{self.base}-*"

    def index_for(self, day: date) -> str:
        return f"{self.base}-{day:%Y.%m.%d}"

    def template_body(self) -> dict[str, Any]:
        """The composable index template, without the `_meta` that provisioning adds."""
        return {
            "index_patterns": [self.pattern],
            "priority": 200,
            "template": {
                "settings": {
                    "number_of_shards": self.shards,
                    "number_of_replicas": self.replicas,
                },
                "mappings": {"dynamic": "strict", **dict(self.mappings)},
            },
        }


@dataclass(frozen=True)
class Tables:
    """Postgres tables of one pipeline; a role a pipeline does not have is None."""

    raw: str
    summary: str | None = None
    anomalies: str | None = None
    late: str | None = None
    lookup: str | None = None
    # Window state a job keeps between batches (user_events: per-user 5 s activity buckets).
    state: str | None = None

    def names(self) -> list[str]:
        return [t for t in (self.raw, self.summary, self.anomalies, self.late, self.lookup, self.state) if t]


@dataclass(frozen=True)
class UserEventRules:
    """Validation of user activity events; names of failed rules go to the dead letters."""

    allowed_actions: tuple[str, ...]
    max_future_skew_s: int
    max_location_length: int
    # Other string fields; also keeps every value under Elasticsearch's keyword term limit.
    max_string_length: int = 256


@dataclass(frozen=True)
class WeatherRules:
    temperature_c: tuple[float, float]
    humidity_pct: tuple[float, float]
    wind_speed_ms: tuple[float, float]
    max_future_skew_s: int


@dataclass(frozen=True)
class AppLogRules:
    formats: tuple[str, ...]
    max_line_length: int
    max_future_skew_s: int


ValidationRules = UserEventRules | WeatherRules | AppLogRules


@dataclass(frozen=True)
class AnomalyRules:
    """A (user, window) is anomalous when its count exceeds `count_threshold`, or its z-score
    against the other users of the same window exceeds `zscore_limit` (only computed when the
    window has at least `min_users_for_zscore` users, so tiny windows do not alert)."""

    window: Window
    count_threshold: int
    zscore_limit: float
    min_users_for_zscore: int
    # Severity: "critical" at `critical_factor` times a limit, "high" at `high_factor`, else "medium".
    high_factor: float = 1.5
    critical_factor: float = 3.0


@dataclass(frozen=True)
class Health:
    """Limits the supervisor applies to a running streaming job."""

    # A running job writes a heartbeat per batch (and when idle, every ~10 s); older is stale.
    max_heartbeat_age_s: int = 120
    # From submit to the first heartbeat: JVM start, Python workers, first batch.
    start_grace_s: int = 180
    # Lag (broker log end minus the job's end offsets) above this, growing at this many
    # consecutive supervisor checks, means the job cannot keep up or is stuck.
    max_lag_records: int = 200_000
    lag_growth_checks: int = 3
    # Restarts in a row before the job is marked failed (and the supervisor run fails).
    max_restarts: int = 5
    # Wait before the n-th restart in a row: initial * 2^(n-1), capped; reset after a healthy period.
    backoff_initial_s: int = 30
    backoff_max_s: int = 600
    healthy_reset_s: int = 900
    # A stop asked for through the registry; the driver is killed if still there after this.
    stop_grace_s: int = 60


@dataclass(frozen=True)
class BatchPolicy:
    """How the batch side treats a pipeline's stored data."""

    # Raw day partitions older than this many days are exported to the lake and dropped.
    hot_retention_days: int = 30
    # A reconciliation mismatch triggers a backfill of exactly the affected range.
    auto_backfill: bool = True
    # Hours after which an hour counts as closed for reconciliation (late data has landed).
    reconcile_delay_hours: int = 1


@dataclass(frozen=True)
class Pipeline:
    """Everything the platform knows about one pipeline."""

    name: str
    description: str
    topic: Topic
    message_format: Literal["json", "log_line"]
    schema: tuple[MessageField, ...]
    validation: ValidationRules
    tables: Tables
    indices: Mapping[str, Index]
    windows: tuple[Window, ...]
    job_module: str
    health: Health = field(default_factory=Health)
    anomaly: AnomalyRules | None = None
    max_offsets_per_trigger: int = 200_000
    trigger_interval_s: int = 5
    # `make up` asks the supervisor to run this job (desired state "running").
    autostart: bool = True
    batch: BatchPolicy = field(default_factory=lambda: BatchPolicy())
    # What the job does when retention deleted records it has not read yet (its checkpoint is
    # below the log start). "fail": the query stops with an error naming the lost offset range
    # (`[from, to)`, topic and partition); a person decides (new checkpoint, or failOnDataLoss).
    # "record": the job skips to what is left and records each lost range in the platform's
    # `lost_ranges_table`, which reconciliation reports. Never a silent skip.
    on_data_loss: DataLossPolicy = "fail"

    @property
    def job_name(self) -> str:
        return self.name

    @property
    def job_path(self) -> str:
        """The job's driver script, relative to the repository root (`job_module` + `/job.py`)."""
        return "/".join([*self.job_module.split("."), "job.py"])

    def checkpoint_location(self, checkpoint_root: str) -> str:
        return f"{checkpoint_root.rstrip('/')}/{self.name}"


@dataclass(frozen=True)
class PlatformNames:
    """Names shared by every pipeline."""

    dead_letter_topic: Topic
    alerts_topic: Topic
    dead_letters_table: str
    outbox_table: str
    jobs_table: str
    heartbeats_table: str
    job_actions_table: str
    reconciliation_runs_table: str
    reconciliation_results_table: str
    backfill_runs_table: str
    compaction_reports_table: str
    # The newest event time per job and query, from which the next batch's watermark follows.
    watermarks_table: str
    migrations_table: str
    # Kafka offset ranges a job skipped because retention deleted them unread (`on_data_loss` "record").
    lost_ranges_table: str
    # Published outbox rows are deleted by compaction after this many days.
    outbox_retention_days: int = 7


PLATFORM = PlatformNames(
    dead_letter_topic=Topic("dead_letter_topic", partitions=3, retention_ms=14 * DAY_MS),
    alerts_topic=Topic("anomaly_alerts", partitions=3, retention_ms=7 * DAY_MS),
    dead_letters_table="dead_letters",
    outbox_table="outbox",
    jobs_table="streaming_jobs",
    heartbeats_table="job_heartbeats",
    job_actions_table="streaming_job_actions",
    reconciliation_runs_table="reconciliation_runs",
    reconciliation_results_table="reconciliation_results",
    backfill_runs_table="backfill_runs",
    compaction_reports_table="compaction_reports",
    watermarks_table="stream_watermarks",
    migrations_table="_yoyo_migration",
    lost_ranges_table="kafka_lost_ranges",
)

_KEYWORD = {"type": "keyword"}
_DATE = {"type": "date"}
_LONG = {"type": "long"}
_INT = {"type": "integer"}
_DOUBLE = {"type": "double"}
_SOURCE_POSITION = {"topic": _KEYWORD, "kafka_partition": _INT, "kafka_offset": _LONG}

USER_EVENTS = Pipeline(
    name="user_events",
    description="User activity events: validation, raw store, enrichment, windowed activity, anomalies.",
    topic=Topic("user_events", partitions=3, retention_ms=7 * DAY_MS),
    message_format="json",
    schema=(
        MessageField("user_id", "long"),
        MessageField("product_id", "long"),
        MessageField("action", "string"),
        MessageField("timestamp", "timestamp"),
        MessageField("device_id", "string"),
        MessageField("device_type", "string"),
        MessageField("location", "string"),
        MessageField("user_segment", "string"),
        MessageField("ip_address", "string"),
    ),
    validation=UserEventRules(
        allowed_actions=("view", "click", "add_to_cart", "remove_from_cart", "purchase", "search", "login", "logout"),
        max_future_skew_s=300,
        max_location_length=200,
    ),
    tables=Tables(
        raw="user_events",
        summary="user_activity_summary",
        anomalies="anomalous_events",
        lookup="users",
        state="user_activity_buckets",
    ),
    indices=_frozen(
        {
            "events": Index(
                "tributary-user-events",
                retention_days=3,
                mappings={
                    "properties": {
                        **_SOURCE_POSITION,
                        "event_ts": _DATE,
                        "user_id": _LONG,
                        "product_id": _LONG,
                        "action": _KEYWORD,
                        "device_id": _KEYWORD,
                        "device_type": _KEYWORD,
                        "location": {"type": "text", "fields": {"raw": {"type": "keyword", "ignore_above": 256}}},
                        "user_segment": _KEYWORD,
                        "ip_address": {"type": "ip"},
                        "ingested_at": _DATE,
                    }
                },
            ),
            "anomalies": Index(
                "tributary-anomalies",
                retention_days=30,
                mappings={
                    "properties": {
                        "user_id": _LONG,
                        "user_name": _KEYWORD,
                        "region": _KEYWORD,
                        "window_start": _DATE,
                        "window_seconds": _INT,
                        "event_count": _LONG,
                        "zscore": _DOUBLE,
                        "rule": _KEYWORD,
                        "severity": _KEYWORD,
                        "detected_at": _DATE,
                    }
                },
            ),
        }
    ),
    # As the seed had them: 5 s tumbling windows with a 30 s watermark, and 1 min windows sliding
    # every 5 s with a 2 min watermark.
    windows=(Window(5, watermark_s=30), Window(60, watermark_s=120, slide_s=5)),
    anomaly=AnomalyRules(
        window=Window(60, watermark_s=120, slide_s=5),
        count_threshold=100,
        zscore_limit=3.0,
        min_users_for_zscore=5,
    ),
    job_module="spark_jobs.user_events",
    # Activity windows and anomaly scores over a hole would be wrong without a sign: stop and ask.
    on_data_loss="fail",
    # Catching up, fewer larger batches spend less on each batch's fixed costs (planning, task
    # start-up, the window close's Spark jobs); tasks stay at maxRecordsPerPartition records.
    max_offsets_per_trigger=500_000,
)

WEATHER = Pipeline(
    name="weather",
    description="Weather station readings: validation, raw store, hourly averages with late-data accounting.",
    topic=Topic("weather_data", partitions=3, retention_ms=7 * DAY_MS),
    message_format="json",
    schema=(
        MessageField("station_id", "string"),
        MessageField("timestamp", "timestamp"),
        MessageField("temperature", "double"),
        MessageField("humidity", "double"),
        MessageField("wind_speed", "double"),
        MessageField("pressure", "double", required=False),
        MessageField("location", "string", required=False),
    ),
    validation=WeatherRules(
        temperature_c=(-90.0, 60.0),
        humidity_pct=(0.0, 100.0),
        wind_speed_ms=(0.0, 120.0),
        max_future_skew_s=300,
    ),
    tables=Tables(raw="weather_readings", summary="weather_summary", late="weather_late_readings"),
    indices=_frozen({}),
    windows=(Window(3600, watermark_s=600),),
    job_module="spark_jobs.weather",
    # Hourly averages survive a hole; fresh readings matter more than a stalled job.
    on_data_loss="record",
)

APP_LOGS = Pipeline(
    name="app_logs",
    description="Access and API logs: parse, normalise, enrich, index for dashboards, per-minute aggregates.",
    topic=Topic("app_logs", partitions=3, retention_ms=3 * DAY_MS),
    message_format="log_line",
    schema=(MessageField("line", "string"),),
    validation=AppLogRules(formats=("combined", "json"), max_line_length=16_384, max_future_skew_s=300),
    tables=Tables(raw="app_log_events", summary="app_log_minute_stats"),
    indices=_frozen(
        {
            "logs": Index(
                "tributary-app-logs",
                retention_days=2,
                mappings={
                    "properties": {
                        **_SOURCE_POSITION,
                        "timestamp": _DATE,
                        "client_ip": {"type": "ip"},
                        "method": _KEYWORD,
                        "path": _KEYWORD,
                        "path_template": _KEYWORD,
                        "status": _INT,
                        "status_class": _KEYWORD,
                        "latency_ms": _DOUBLE,
                        "bytes": _LONG,
                        "referrer": _KEYWORD,
                        "user_agent": {"type": "text", "fields": {"raw": {"type": "keyword", "ignore_above": 512}}},
                        "browser": _KEYWORD,
                        "os": _KEYWORD,
                        "device": _KEYWORD,
                        "hour_of_day": _INT,
                        "weekday": _INT,
                        "source_format": _KEYWORD,
                    }
                },
            ),
        }
    ),
    windows=(Window(60, watermark_s=120),),
    job_module="spark_jobs.app_logs",
    # Dashboards want today's logs; a recorded hole is better than a stalled job.
    on_data_loss="record",
)

PIPELINES: Mapping[str, Pipeline] = _frozen({p.name: p for p in (USER_EVENTS, WEATHER, APP_LOGS)})


def get_pipeline(name: str) -> Pipeline:
    """The pipeline called `name`; the error lists the known names."""
    try:
        return PIPELINES[name]
    except KeyError:
        raise KeyError(f"unknown pipeline {name!r}; the catalog has: {', '.join(sorted(PIPELINES))}") from None


def all_topics() -> list[Topic]:
    """Every topic the platform uses: pipeline inputs, then the shared alert and dead-letter topics."""
    return [p.topic for p in PIPELINES.values()] + [PLATFORM.alerts_topic, PLATFORM.dead_letter_topic]


def all_indices() -> list[Index]:
    """Every Elasticsearch index family, each with its own index template."""
    return [index for p in PIPELINES.values() for index in p.indices.values()]


def all_tables() -> list[str]:
    """Every Postgres table the catalog names (shared ones first)."""
    shared = [
        PLATFORM.dead_letters_table,
        PLATFORM.outbox_table,
        PLATFORM.jobs_table,
        PLATFORM.heartbeats_table,
        PLATFORM.job_actions_table,
        PLATFORM.reconciliation_runs_table,
        PLATFORM.reconciliation_results_table,
        PLATFORM.backfill_runs_table,
        PLATFORM.compaction_reports_table,
        PLATFORM.watermarks_table,
        PLATFORM.lost_ranges_table,
    ]
    return shared + [t for p in PIPELINES.values() for t in p.tables.names()]
