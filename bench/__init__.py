"""Benchmarks: each measures a ratio against its reference, side by side in one run (never a timed test)."""
