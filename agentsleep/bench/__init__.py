"""Benchmarks: `agentsleep bench` suites and the report writer (docs/BENCHMARKS.md)."""
