"""Benchmarks: consensus, read, the paper's two-step console calls, and their workload."""
