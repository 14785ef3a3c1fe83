"""Spark streaming sources: where the jobs read their input from."""
