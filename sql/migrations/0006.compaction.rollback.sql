DROP TABLE IF EXISTS compaction_reports;
