"""The installed package's version, as ``--version`` and the OpenAPI document state it."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    try:
        return version("llm-proxy")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0"
