"""Benchmark restorers (MGFR, CodeFormer, ...) into DuckDB tables and leaderboards."""
