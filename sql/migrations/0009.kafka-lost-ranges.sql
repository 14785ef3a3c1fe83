-- Kafka records retention deleted before a streaming job read them: the offset ranges a job whose
-- catalog entry says on_data_loss = "record" skipped, for reconciliation to report. (With "fail"
-- the job stops instead, naming the range.)
-- depends: 0008.user-events-buckets

-- One row per lost range, keyed by where it starts: a replayed batch that finds the same loss
-- again (the driver while planning, then a task while reading) records it once. Offsets are
-- [from_offset, to_offset); to_offset is NULL when the end is unknown because the log was
-- replaced (topic recreated, log truncated, partition gone) and what the old log held from
-- from_offset on is gone.
CREATE TABLE kafka_lost_ranges (
    job_name         text        NOT NULL,
    topic            text        NOT NULL,
    kafka_partition  integer     NOT NULL,
    from_offset      bigint      NOT NULL CHECK (from_offset >= 0),
    to_offset        bigint      CHECK (to_offset > from_offset),
    detected_at      timestamptz NOT NULL DEFAULT now(),
    reason           text        NOT NULL,
    PRIMARY KEY (topic, kafka_partition, from_offset)
);
