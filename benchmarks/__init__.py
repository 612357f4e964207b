"""Benchmarks: what the gateway adds over calling the model server directly (docs/benchmarks.md)."""
