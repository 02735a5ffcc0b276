"""The text-to-value parsers settings and the tuning guide's variables share."""

from __future__ import annotations

from collections.abc import Callable


def integer(minimum: int = 0) -> Callable[[str], int]:
    """A parser of whole numbers ``>= minimum``; raises ValueError saying what it expects."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"an integer >= {minimum}") from None
        if value < minimum:
            raise ValueError(f"an integer >= {minimum}")
        return value

    return parse


def boolean(text: str) -> bool:
    """``true/false``, ``1/0``, ``yes/no``, ``on/off``."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("true or false")
