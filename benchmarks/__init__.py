"""Benchmarks (run as modules, e.g. `python -m benchmarks.bench_mlp`); not part of the test suite."""
