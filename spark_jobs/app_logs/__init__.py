"""The app_logs pipeline: access and API log lines -> parsed, templated, UA-enriched rows and minute statistics."""
