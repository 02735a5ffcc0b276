"""Proxy tokens: generation, hashing for storage and lookup, and the one masking function."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

TOKEN_PREFIX = "sk-llmp-"
# the prefix, then 43 characters of URL-safe base64 (32 random bytes)
_TOKEN_SHAPE = re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_-]{43}")
DISPLAY_CHARS = 12  # "sk-llmp-" plus four random characters: enough to tell tokens apart
_RANDOM_BYTES = 32  # 256 bits


def generate_token() -> str:
    """A new token: the prefix followed by 256 random bits in URL-safe base64 (43 characters)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(_RANDOM_BYTES)


def hash_token(token: str) -> str:
    """The stored form of a token: hex SHA-256 (256 random bits need no salt)."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def display_prefix(token: str) -> str:
    """The part of a token kept in clear so operators can recognise it."""
    return token[:DISPLAY_CHARS]


def mask_token(token: str | None) -> str:
    """How a token (or anything that might be one) appears in logs and output: never in full."""
    if not token:
        return "(none)"
    if token.startswith(TOKEN_PREFIX) and len(token) > DISPLAY_CHARS + 4:
        return token[:DISPLAY_CHARS] + "…"
    if len(token) <= 8:
        return "***"
    return token[:3] + "…"


def looks_like_token(value: str) -> bool:
    """Cheap shape check before hashing: right prefix and length, URL-safe alphabet."""
    return _TOKEN_SHAPE.fullmatch(value) is not None


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
