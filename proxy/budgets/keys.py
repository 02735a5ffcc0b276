"""Where a request's budget counters live in Redis: all of them in one slot, so one script
decides them; different tokens (or projects) in different slots, so a Cluster spreads them."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from shared.store.budgets import BudgetLimit

#: The hash tag's fixed part; the digest of the group (below) follows it inside the braces.
TAG = "llm-proxy-budgets"
_CACHE_BOUND = 65536


def group_of(limits: Sequence[BudgetLimit], project_id: str, token_id: str) -> str:
    """The owner whose slot holds a request's counters: its project when the project has a
    budget (that counter is shared by every token of the project, so the tokens' own counters
    must sit beside it for one script to see both), else the token."""
    return project_id if any(b.owner_id == project_id for b in limits) else token_id


class BudgetKeys:
    """``<prefix>{llm-proxy-budgets:<group digest>}:<owner digest>:<window>``; ids appear only
    as HMAC-SHA256 digests (the limiter's key secret), as in the limiter's keys."""

    def __init__(self, prefix: str, secret: bytes) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must not contain braces (it would move the hash tag)")
        self.prefix = prefix
        self._secret = secret
        self._digests: dict[str, str] = {}

    def digest(self, value: str) -> str:
        d = self._digests.get(value)
        if d is None:
            if len(self._digests) >= _CACHE_BOUND:
                self._digests.clear()
            mac = hmac.new(self._secret, b"budget:" + value.encode(), hashlib.sha256)
            d = self._digests[value] = mac.hexdigest()[:32]
        return d

    def key(self, limit: BudgetLimit, group: str) -> str:
        return (
            f"{self.prefix}{{{TAG}:{self.digest(group)}}}:"
            f"{self.digest(limit.owner_id)}:{limit.window.key}"
        )
