"""Benchmarks: `python -m benchmarks.<name> --json OUT` (never timed tests)."""
