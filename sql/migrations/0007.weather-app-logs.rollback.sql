DROP TABLE IF EXISTS app_log_minute_stats;
DROP TABLE IF EXISTS app_log_events;
DROP TABLE IF EXISTS weather_late_readings;
DROP TABLE IF EXISTS weather_summary;
DROP TABLE IF EXISTS weather_readings;
ALTER TABLE job_heartbeats DROP COLUMN IF EXISTS late_rows;
DROP TABLE IF EXISTS stream_watermarks;
