ALTER TABLE stream_watermarks DROP COLUMN IF EXISTS previous_max_event_ts, DROP COLUMN IF EXISTS batch_id;
DROP TABLE IF EXISTS user_activity_buckets;
DROP AGGREGATE IF EXISTS array_concat_agg(anycompatiblearray);
