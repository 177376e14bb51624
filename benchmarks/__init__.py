"""ntkspec benchmarks: run as `python -m benchmarks run` (see benchmarks/README in RESULTS.md)."""
