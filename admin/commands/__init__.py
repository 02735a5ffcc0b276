"""Sub-commands of ``llm-proxy manage``."""
