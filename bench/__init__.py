"""Benchmarks: each script compares variants side by side in one process (see RESULTS_*.md)."""
