"""The user_events pipeline: validation, raw store, enrichment, windowed activity, anomalies."""
