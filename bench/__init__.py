"""On-demand pytest-benchmark suite (``pytest bench/``); see ``bench/README.md``."""
