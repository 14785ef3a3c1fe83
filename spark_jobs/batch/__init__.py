"""Batch jobs over the raw tables: backfill, reconciliation, compaction exports."""
