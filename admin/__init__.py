"""The ``llm-proxy`` command line."""
