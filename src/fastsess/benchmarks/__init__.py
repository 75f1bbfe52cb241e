"""Measurement code behind ``fastsess bench`` and the ``bench/`` pytest-benchmark suite.

Each module exposes plain functions that return JSON-ready dicts, so the CLI,
the benchmark suite and ``bench/README.md`` all report the same measurements.
"""
