"""Benchmarks: scripts that print figures, not timed tests (see bench/README.md).

Each benchmark measures a baseline in the same run and quotes ratios and medians, because the
machines are shared and noisy and one absolute time means little.
"""
