"""``python -m admin`` is the same as ``llm-proxy``."""

from admin.cli import main

main()
