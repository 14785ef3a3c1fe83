"""The weather pipeline: station readings -> raw store, hourly averages, late-readings accounting."""
