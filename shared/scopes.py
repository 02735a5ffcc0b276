"""Model scopes: which models a token or project may use, as exact names and globs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import translate

from shared.errors import UserError

MAX_PATTERNS = 100
MAX_PATTERN = 200


def normalise_models(text: str) -> str | None:
    """``'gpt-4o-mini, gpt-4.1-*'`` → ``'gpt-4o-mini,gpt-4.1-*'``; empty → None (no scope).
    Patterns are exact names or globs (``*``, ``?``, ``[...]``), matched case-sensitively."""
    patterns = [p.strip() for p in text.split(",")]
    if not any(patterns):
        return None
    if any(not p for p in patterns):
        raise UserError("models must be comma-separated names or globs, without empty entries")
    if len(patterns) > MAX_PATTERNS:
        raise UserError(f"models takes at most {MAX_PATTERNS} names or globs")
    for p in patterns:
        if len(p) > MAX_PATTERN or any(c.isspace() or not c.isprintable() for c in p):
            raise UserError(f"not a model name or glob: {p[:40]!r}")
    return ",".join(dict.fromkeys(patterns))


def check_models(text: str) -> str:
    """A management input's scope, normalised; ``""`` (store no scope) when empty."""
    return normalise_models(text) or ""


@dataclass(frozen=True, slots=True)
class ModelScope:
    """The models allowed by every scope that applies (a token's and its project's): a model
    must match a pattern of each."""

    patterns: tuple[str, ...]  # one comma-joined text per scope
    _matchers: tuple[re.Pattern[str], ...]

    @classmethod
    def of(cls, *scopes: str | None) -> ModelScope | None:
        given = tuple(s for s in scopes if s)
        if not given:
            return None
        matchers = tuple(
            re.compile("|".join(f"(?:{translate(p)})" for p in s.split(","))) for s in given
        )
        return cls(given, matchers)

    def allows(self, model: str) -> bool:
        return all(m.match(model) is not None for m in self._matchers)
