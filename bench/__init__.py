"""Benchmarks; each script prints its figures and writes nothing into the tree."""
