"""Benchmarks for speed-to-lead: `make bench` / `make bench-quick` (see docs/benchmarks.md)."""
