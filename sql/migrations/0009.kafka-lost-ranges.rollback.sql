DROP TABLE IF EXISTS kafka_lost_ranges;
