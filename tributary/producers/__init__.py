"""Producers of demo and test traffic for each pipeline."""
