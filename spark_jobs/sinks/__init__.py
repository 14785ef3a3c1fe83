"""Idempotent sinks: PostgreSQL (COPY + merge), Elasticsearch (deterministic ids), the outbox."""
