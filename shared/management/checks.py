"""Checks of management input values: each normalises one value or raises ``UserError``."""

from __future__ import annotations

import math
import re
import urllib.parse
from datetime import UTC, datetime, timedelta

from shared.config import parse_duration
from shared.errors import UserError
from shared.tokens import mask_token

DEFAULT_BASE_URL = "https://api.openai.com/v1"
MAX_PAGE = 1000
#: Why an entry became a dead letter (the dispatcher's reasons: dispatcher.deadletter).
DEAD_LETTER_REASONS = ("undecodable", "rejected", "max_deliveries")


def parse_span(text: str) -> timedelta:
    """The one duration grammar of every management input: ``24`` (hours, as the operator docs
    write it), ``90s``, ``30m``, ``1h30m``, ``7d``. Zero and negative spans are refused."""
    try:
        seconds = parse_duration(text.strip().lower(), bare_unit="h")
    except ValueError:
        raise UserError(
            f"invalid duration {text!r}: use hours (24) or a unit (30m, 24h, 7d)"
        ) from None
    if seconds <= 0 or not math.isfinite(seconds) or seconds > 3650 * 86400:
        raise UserError(f"invalid duration {text!r}: must be between 1s and 10 years")
    return timedelta(seconds=seconds)


def parse_token_duration(text: str) -> timedelta | None:
    """A token's lifetime: a span, or ``never`` for no expiry. ``0`` is refused rather than
    read as "never": a typo must not mint a token that lives for ever."""
    if text.strip().lower() == "never":
        return None
    try:
        return parse_span(text)
    except UserError as exc:
        raise UserError(f"{exc.message}; 'never' for no expiry") from None


def parse_since(text: str, now: datetime) -> datetime:
    """A point in time: ISO 8601 (UTC when no offset is given) or a span back from now (1h)."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        try:
            return now - parse_span(text)
        except UserError:
            raise UserError(
                f"invalid time {text!r}: use an ISO 8601 time such as 2025-01-31T12:00:00Z "
                "or a span back from now (30m, 1h, 7d)"
            ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 200 or any(ord(c) < 32 for c in name):
        raise UserError("project name must be 1-200 printable characters")
    return name


def check_base_url(url: str) -> str:
    url = url.strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"base URL must be an http(s) URL with a host, got {url!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise UserError("base URL must not contain credentials, a query or a fragment")
    return url


def check_api_key(key: str | None) -> str:
    key = (key or "").strip()
    if not key:
        raise UserError(
            "an upstream API key is required (--api-key, --api-key-stdin or UPSTREAM_API_KEY)"
        )
    if any(c.isspace() for c in key) or len(key) > 4096:
        raise UserError("the upstream API key must be one line without spaces")
    return key


def zero_is_none(value: int | None) -> int | None:
    """``0`` means no cap, stored as NULL like an omitted value."""
    return value or None


def check_path_prefix(prefix: str) -> str:
    if not prefix.startswith("/") or len(prefix) > 2048 or any(ord(c) < 32 for c in prefix):
        raise UserError(f"path prefix must start with / (e.g. /v1/models), got {prefix!r}")
    return prefix


def shown_id(value: str) -> str:
    """An id as echoed in an error: in full if it has an id's shape, else masked, because people
    paste tokens where ids belong."""
    if ID_SHAPE.fullmatch(value):
        return repr(value)
    return repr(mask_token(value))


ID_SHAPE = re.compile(r"[0-9a-fA-F-]{1,36}")


def safe_id(value: str) -> str:
    return value if not value or ID_SHAPE.fullmatch(value) else mask_token(value)
