"""HTTP caching header parsers: Cache-Control, HTTP dates, entity tags, Vary; pure and total."""

from __future__ import annotations

import email.utils
import math
from collections.abc import Iterable, Sequence

# The largest freshness lifetime we accept from any header: bigger numbers are clamped (RFC 9111
# 1.2.2 says a cache may), which also keeps absurd digit strings from costing anything.
MAX_SECONDS = 10 * 365 * 86400

RawHeaders = Sequence[tuple[bytes, bytes]]


def parse_cache_control(value: str) -> dict[str, str | None]:
    """``'public, max-age=60, private="a, b"'`` → ``{"public": None, "max-age": "60", ...}``.

    Directive names are lower-cased; quoted values are unquoted (commas inside quotes stay in the
    value). The first occurrence of a directive wins. Never raises.
    """
    out: dict[str, str | None] = {}
    i, n = 0, len(value)
    while i < n:
        # skip separators and whitespace before a directive
        while i < n and value[i] in " \t,":
            i += 1
        start = i
        while i < n and value[i] not in "=,":
            i += 1
        name = value[start:i].strip().lower()
        arg: str | None = None
        if i < n and value[i] == "=":
            i += 1
            while i < n and value[i] in " \t":
                i += 1
            if i < n and value[i] == '"':
                i += 1
                chars: list[str] = []
                while i < n and value[i] != '"':
                    if value[i] == "\\" and i + 1 < n:
                        i += 1
                    chars.append(value[i])
                    i += 1
                i += 1  # the closing quote (or past the end)
                arg = "".join(chars)
                while i < n and value[i] != ",":
                    i += 1
            else:
                start = i
                while i < n and value[i] != ",":
                    i += 1
                arg = value[start:i].strip()
        if name and name not in out:
            out[name] = arg
    return out


def delta_seconds(value: str | None) -> int | None:
    """A ``max-age``-style argument: a non-negative integer, clamped to MAX_SECONDS; else None."""
    if value is None:
        return None
    value = value.strip()
    if not value.isascii() or not value.isdigit():
        return None
    if len(value) > 10:
        return MAX_SECONDS
    return min(int(value), MAX_SECONDS)


def parse_ttl(value: str | None) -> float | None:
    """``X-Proxy-Cache-TTL``: seconds, integer or decimal, > 0; anything else is ignored (None)."""
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > 16 or not value.isascii():
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return min(seconds, float(MAX_SECONDS))


def parse_http_date(value: str | None) -> float | None:
    """An HTTP date (IMF-fixdate, RFC 850 or asctime) as epoch seconds; None if unparseable."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_tz(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None:
        return None
    try:
        return float(email.utils.mktime_tz(parsed))
    except (TypeError, ValueError, OverflowError):
        return None


def format_http_date(epoch: float) -> str:
    return email.utils.formatdate(epoch, usegmt=True)


def _opaque_tags(value: str) -> list[str]:
    """The opaque parts of a list of entity tags, ``W/`` stripped (weak comparison)."""
    tags = []
    for part in value.split(","):
        tag = part.strip()
        if tag.startswith(("W/", "w/")):
            tag = tag[2:]
        if tag:
            tags.append(tag)
    return tags


def etag_matches(if_none_match: str, etag: str | None) -> bool:
    """RFC 9110 13.1.2: ``*`` matches any current representation; otherwise a weak comparison."""
    if if_none_match.strip() == "*":
        return True
    if not etag:
        return False
    mine = _opaque_tags(etag)
    return bool(mine) and mine[0] in _opaque_tags(if_none_match)


def not_modified(
    if_none_match: str | None,
    if_modified_since: str | None,
    etag: str | None,
    last_modified: str | None,
) -> bool:
    """Whether a client's conditional GET/HEAD is satisfied by a representation with these
    validators (RFC 9110 13.2.2: If-None-Match wins over If-Modified-Since)."""
    if if_none_match is not None:
        return etag_matches(if_none_match, etag)
    if if_modified_since is None or last_modified is None:
        return False
    since = parse_http_date(if_modified_since)
    modified = parse_http_date(last_modified)
    return since is not None and modified is not None and modified <= since


def parse_vary(values: Iterable[str]) -> tuple[str, ...] | None:
    """Field names listed in Vary (lower-cased, sorted, unique); None means ``Vary: *``."""
    names: set[str] = set()
    for value in values:
        for part in value.split(","):
            name = part.strip().lower()
            if name == "*":
                return None
            if name:
                names.add(name)
    return tuple(sorted(names))
