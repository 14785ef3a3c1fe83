-- user_events pipeline: the users lookup, raw events, windowed activity and anomalies.
-- depends: 0001.platform

CREATE TABLE users (
    user_id     bigint      PRIMARY KEY,
    name        text        NOT NULL,
    email       text,
    region      text        NOT NULL,
    segment     text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Keyed by source position; the partition key (event_ts) must be part of the key, and a given
-- position always carries the same event_ts, so a replay lands in the same partition.
CREATE TABLE user_events (
    topic            text        NOT NULL,
    kafka_partition  integer     NOT NULL,
    kafka_offset     bigint      NOT NULL,
    kafka_timestamp  timestamptz,
    event_ts         timestamptz NOT NULL,
    user_id          bigint      NOT NULL,
    product_id       bigint      NOT NULL,
    action           text        NOT NULL,
    device_id        text,
    device_type      text,
    location         text,
    user_segment     text,
    ip_address       inet,
    -- When the row was written (not the transaction start), for produce-to-queryable latency.
    ingested_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (topic, kafka_partition, kafka_offset, event_ts)
) PARTITION BY RANGE (event_ts);
CREATE INDEX user_events_user_ts_idx ON user_events (user_id, event_ts);

CREATE TABLE user_activity_summary (
    user_id            bigint      NOT NULL,
    window_start       timestamptz NOT NULL,
    window_seconds     integer     NOT NULL,
    event_count        bigint      NOT NULL,
    distinct_products  integer     NOT NULL,
    action_counts      jsonb       NOT NULL,
    first_event_ts     timestamptz NOT NULL,
    last_event_ts      timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, window_start, window_seconds)
);
CREATE INDEX user_activity_summary_window_idx ON user_activity_summary (window_start, window_seconds);

CREATE TABLE anomalous_events (
    user_id         bigint           NOT NULL,
    window_start    timestamptz      NOT NULL,
    window_seconds  integer          NOT NULL,
    event_count     bigint           NOT NULL,
    zscore          double precision,
    rule            text             NOT NULL CHECK (rule IN ('threshold', 'zscore', 'threshold+zscore')),
    severity        text             NOT NULL CHECK (severity IN ('medium', 'high', 'critical')),
    user_name       text,
    region          text,
    detected_at     timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, window_start, window_seconds)
);
CREATE INDEX anomalous_events_detected_idx ON anomalous_events (detected_at);
