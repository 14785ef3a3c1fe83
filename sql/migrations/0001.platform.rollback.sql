DROP FUNCTION IF EXISTS ensure_day_partition(regclass, date);
DROP TABLE IF EXISTS job_heartbeats;
DROP TABLE IF EXISTS streaming_jobs;
DROP TABLE IF EXISTS outbox;
DROP TABLE IF EXISTS dead_letters;
