"""Tributary: an Airflow-orchestrated streaming data platform."""

__version__ = "0.1.0"
