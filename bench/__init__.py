"""Benchmarks: scripts that drive the real bot process against the fakes and print figures (not tests)."""
