"""Benchmarks: commands that print measured numbers (recorded in docs/PERF.md)."""
