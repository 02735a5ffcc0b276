"""Time in one place, so tests can inject a clock and every stored timestamp is UTC."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def new_id() -> str:
    """A UUID (version 7 layout: 48-bit millisecond time, then random bits) as a string.

    Time-ordered ids keep B-tree inserts local, which matters for request_events.
    """
    # random bits from the (fork-safe) Mersenne Twister: ids must be unique, not secret, and a
    # getrandom() system call per request is measurable
    raw = bytearray((time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF).to_bytes(6, "big"))
    raw += random.getrandbits(80).to_bytes(10, "big")
    raw[6] = 0x70 | (raw[6] & 0x0F)  # version 7
    raw[8] = 0x80 | (raw[8] & 0x3F)  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
