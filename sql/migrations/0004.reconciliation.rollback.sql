DROP INDEX IF EXISTS dead_letters_topic_kafka_timestamp_idx;
DROP INDEX IF EXISTS user_events_kafka_timestamp_brin;
DROP TABLE IF EXISTS reconciliation_results;
DROP TABLE IF EXISTS reconciliation_runs;
