"""Benchmarks: each writes its figures and exact command to benchmarks/results/."""
