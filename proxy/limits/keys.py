"""The limiter's Redis key layout: token ids and IPs HMAC-hashed; one hash tag on one server,
each token's keys under its own tag on a Redis Cluster."""

from __future__ import annotations

import hashlib
import hmac

from proxy.limits.clientip import limit_key
from shared.config import Settings

#: Every key of the limiter carries this hash tag, so the one script call per request (global,
#: IP, token, quota and lease keys together) stays inside one Redis Cluster slot.
HASH_TAG = "{llm-proxy-limits}"

_CACHE_BOUND = 65536  # entries per digest cache before it is cleared


def key_secret(settings: Settings) -> bytes:
    """DISTRIBUTED_RATE_LIMIT_KEY_SECRET, or a key derived from ENCRYPTION_KEY: the same on every
    instance, never stored in Redis."""
    secret = settings.distributed_rate_limit_key_secret.get()
    if secret:
        return secret.encode()
    return hmac.new(
        settings.encryption_key.get().encode(), b"llm-proxy rate-limit keys", hashlib.sha256
    ).digest()


class KeyLayout:
    """``<prefix>{llm-proxy-limits}:<kind>[:<digest>]``. A Redis dump shows which kind of limit
    a key is, never a token id or client address: those appear only as HMAC-SHA256 digests.

    With ``spread`` (Redis Cluster) a token's keys are ``<prefix>{llm-proxy-limits:<digest>}:t``
    and ``...:c``: each token in its own slot, so token load spreads over the shards, while
    the global and per-IP windows stay under the common tag (see proxy/limits/spread.py). One
    server keeps the single-tag names, so upgrading in place keeps every window."""

    def __init__(self, prefix: str, secret: bytes, *, spread: bool = False) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must not contain braces (it would move the hash tag)")
        self.prefix = prefix
        self.spread = spread
        self.base = f"{prefix}{HASH_TAG}:"
        self.global_key = self.base + "g"
        self._secret = secret
        self._tokens: dict[str, tuple[str, str, str]] = {}
        self._ips: dict[str, str] = {}

    def digest(self, value: str) -> str:
        # 128 bits of the HMAC: unguessable, and keys stay short.
        return hmac.new(self._secret, value.encode(), hashlib.sha256).hexdigest()[:32]

    def token_keys(self, token_id: str) -> tuple[str, str, str]:
        """(rate log, unused since quotas live in the database, concurrency leases) of one token."""
        keys = self._tokens.get(token_id)
        if keys is None:
            if len(self._tokens) >= _CACHE_BOUND:
                self._tokens.clear()
            d = self.digest("token:" + token_id)
            if self.spread:
                own = f"{self.prefix}{{{HASH_TAG[1:-1]}:{d}}}:"
                keys = self._tokens[token_id] = (own + "t", own + "q", own + "c")
                return keys
            keys = self._tokens[token_id] = (
                f"{self.base}t:{d}",
                f"{self.base}q:{d}",
                f"{self.base}c:{d}",
            )
        return keys

    def ip_key(self, ip: str) -> str:
        key = self._ips.get(ip)
        if key is None:
            if len(self._ips) >= _CACHE_BOUND:
                self._ips.clear()
            key = self._ips[ip] = f"{self.base}ip:{self.digest('ip:' + limit_key(ip))}"
        return key
