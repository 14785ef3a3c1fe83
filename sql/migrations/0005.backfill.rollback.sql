DROP INDEX IF EXISTS user_events_event_ts_brin;
DROP TABLE IF EXISTS backfill_runs;
