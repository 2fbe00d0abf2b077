"""Benchmarks, each run as `python -m chatmesh.benchmarks.NAME`."""
