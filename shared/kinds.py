"""The provider kinds a project or upstream may be (what each one means to the proxy:
proxy/upstream/providers.py)."""

from __future__ import annotations

OPENAI, ANTHROPIC, AZURE_OPENAI, OPENAI_COMPATIBLE = (
    "openai",
    "anthropic",
    "azure-openai",
    "openai-compatible",
)
KINDS = (OPENAI, ANTHROPIC, AZURE_OPENAI, OPENAI_COMPATIBLE)
