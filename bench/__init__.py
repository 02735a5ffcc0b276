"""The benchmark: fake upstream, load drivers and the bench/run harness (not packaged)."""
