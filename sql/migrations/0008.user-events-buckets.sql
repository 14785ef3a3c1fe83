-- user_events in one pass: the per-user 5 s activity buckets the job adds each batch's new events
-- to (the state the 1-minute sliding windows are summed from when the watermark closes them),
-- and a watermark a replayed batch reads exactly as its first attempt did.
-- depends: 0007.weather-app-logs

-- One row per (user, 5 s bucket) while a sliding window containing it may still close; the job
-- deletes a bucket once every window over it is closed. Products are kept as a set (sorted,
-- distinct) so a window's distinct-product count is exact however its buckets were filled.
-- Action counts are an array in the order of the catalog's allowed actions: plain sums, where
-- jsonb objects would cost a parse per row. (Buckets live minutes; a changed action list applies
-- to buckets started after the job restarts with it.)
CREATE TABLE user_activity_buckets (
    user_id         bigint      NOT NULL,
    bucket_start    timestamptz NOT NULL,
    event_count     bigint      NOT NULL,
    products        bigint[]    NOT NULL,
    action_counts   bigint[]    NOT NULL,
    first_event_ts  timestamptz NOT NULL,
    last_event_ts   timestamptz NOT NULL,
    PRIMARY KEY (bucket_start, user_id)
) WITH (fillfactor = 80);

-- Concatenates arrays over rows: a window's product sets, deduplicated after.
CREATE AGGREGATE array_concat_agg(anycompatiblearray) (SFUNC = array_cat, STYPE = anycompatiblearray);

-- The batch that last moved max_event_ts, and the value before it: a replay of that batch (same
-- id) reads the earlier value, so it decides lateness and closes windows exactly as before.
ALTER TABLE stream_watermarks
    ADD COLUMN batch_id bigint,
    ADD COLUMN previous_max_event_ts timestamptz;
