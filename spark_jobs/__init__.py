"""Spark jobs: streaming jobs per pipeline, their sources and sinks, and the batch jobs."""
