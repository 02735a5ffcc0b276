"""Which of a project's upstreams to try, in what order: by priority, then by weight within a
priority (at random, or by an affinity key so a conversation keeps its upstream); and which
upstream answers may be retried elsewhere."""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

from proxy.upstream.providers import NO_DEPLOYMENTS, Deployments, Provider

#: statuses that mean "try another upstream" when they come before any body byte
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 529})
_MAX_RETRY_AFTER = 3600.0  # a longer Retry-After is a bug or an outage: an hour is plenty


@dataclass(frozen=True, slots=True)
class Target:
    """One upstream of a project, its key decrypted (never logged)."""

    id: str
    provider: Provider
    base_url: str
    api_key: str
    weight: int = 1
    priority: int = 0
    deployments: Deployments = NO_DEPLOYMENTS  # azure-openai: model -> deployment, api-version

    def __repr__(self) -> str:  # keeps the key out of logs and tracebacks
        return f"Target({self.id}, {self.provider.kind}, {self.base_url})"


def plan(targets: tuple[Target, ...], affinity: str | None, rng: random.Random) -> list[Target]:
    """Every target once: lower priority numbers first; within a priority, ordered by weighted
    rendezvous hashing (the affinity key's hash, or a random draw), so weights share the
    traffic and one key always gets the same order while the set of upstreams stays."""
    scored: list[tuple[int, float, Target]] = []
    for target in targets:
        if affinity is None:
            draw = rng.random() or 1e-12
        else:
            digest = hashlib.blake2b(f"{affinity}\0{target.id}".encode(), digest_size=8).digest()
            draw = (int.from_bytes(digest, "big") + 1) / (2**64 + 2)
        # -w/ln(u): the largest wins with probability proportional to w (weighted rendezvous)
        score = -max(target.weight, 0) / math.log(draw) if target.weight > 0 else 0.0
        scored.append((target.priority, -score, target))
    scored.sort(key=lambda item: (item[0], item[1]))
    return [target for _, _, target in scored]


def retry_after_seconds(value: bytes | None) -> float | None:
    """A Retry-After header in seconds (delta-seconds only; an HTTP date reads as absent)."""
    if not value:
        return None
    text = value.strip()
    if not text.isdigit():
        try:
            seconds = float(text)
        except ValueError:
            return None
    else:
        seconds = float(int(text))
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, _MAX_RETRY_AFTER)
