DROP TABLE IF EXISTS anomalous_events;
DROP TABLE IF EXISTS user_activity_summary;
DROP TABLE IF EXISTS user_events;
DROP TABLE IF EXISTS users;
