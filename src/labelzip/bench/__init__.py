"""Benchmarks as library code: measured, not asserted (see benchmarks/)."""
