"""Stream entries as the dispatcher sees them, and the checks that make an event storable."""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass

from shared.events import RequestEvent
from shared.streams import EVENT_FIELD

#: A request event is a few hundred bytes; anything this large is not one of ours.
MAX_ENTRY_BYTES = 64 * 1024

_INT4 = (-(2**31), 2**31 - 1)
_INT8 = (-(2**63), 2**63 - 1)
_INT4_FIELDS = ("status", "attempts")
_INT8_FIELDS = (
    "request_bytes",
    "response_bytes",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cache_creation_tokens",
    "cache_read_tokens",
)
_FLOAT_FIELDS = ("duration_ms", "upstream_ms", "ttfb_ms")
_TEXT_FIELDS = (
    "event_id",
    "request_id",
    "project_id",
    "token_id",
    "method",
    "path",
    "model",
    "cache_status",
    "error",
    "client_ip",
    "usage_source",
    "trace_id",
    "span_id",
    "upstream",
)
_MAX_TS = 2.0**33  # the year 2242: later is a unit mistake, and beyond Postgres's range soon
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(slots=True)
class Entry:
    """One stream entry: its id, its fields and how often Redis has handed it out; once
    decoded, its event or why it has none."""

    entry_id: str
    fields: dict[bytes, bytes]
    deliveries: int = 1
    event: RequestEvent | None = None
    error: str = ""

    def decode(self, *, uuid_ids: bool) -> None:
        """Decode once (the reader does it while the writer waits on the database)."""
        if self.event is None and not self.error:
            try:
                self.event = decode(self, uuid_ids=uuid_ids)
            except ValueError as exc:
                self.error = str(exc) or "undecodable"

    @property
    def payload(self) -> bytes:
        """The raw event, or every field when the entry lacks ours (kept in dead letters)."""
        value = self.fields.get(EVENT_FIELD)
        if value is not None:
            return value
        return b"\n".join(k + b"=" + v for k, v in sorted(self.fields.items()))


def canonical_uuid(value: str) -> str | None:
    """The canonical lowercase form of a UUID, or None when ``value`` is not one."""
    if _CANONICAL_UUID.fullmatch(value):
        return value
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def decode(entry: Entry, *, uuid_ids: bool) -> RequestEvent:
    """The entry's event, checked so the database will take it; ``ValueError`` says why not.

    With ``uuid_ids`` (Postgres) ids must be UUIDs and are put in canonical form, so the ids
    Postgres returns from an insert match the ones we sent."""
    if not entry.fields:
        raise ValueError("the entry was deleted from the stream before it was recorded")
    data = entry.fields.get(EVENT_FIELD)
    if data is None:
        raise ValueError(f"entry has no {EVENT_FIELD.decode()!r} field")
    if len(data) > MAX_ENTRY_BYTES:
        raise ValueError(f"entry is {len(data)} bytes, more than {MAX_ENTRY_BYTES}")
    event = RequestEvent.from_bytes(data)
    check_storable(event, uuid_ids=uuid_ids)
    return event


def check_storable(event: RequestEvent, *, uuid_ids: bool) -> None:
    """Reject values the request_events columns cannot hold; normalise ids in place."""
    if uuid_ids:
        event_id = canonical_uuid(event.event_id)
        if event_id is None:
            raise ValueError(f"event_id is not a UUID: {event.event_id[:64]!r}")
        event.event_id = event_id
        for name in ("project_id", "token_id"):
            value = getattr(event, name)
            if value:
                canonical = canonical_uuid(value)
                if canonical is None:
                    raise ValueError(f"{name} is not a UUID: {value[:64]!r}")
                setattr(event, name, canonical)
    for name in _INT4_FIELDS:
        if not _INT4[0] <= getattr(event, name) <= _INT4[1]:
            raise ValueError(f"{name} is out of range")
    for name in _INT8_FIELDS:
        if not _INT8[0] <= getattr(event, name) <= _INT8[1]:
            raise ValueError(f"{name} is out of range")
    for name in _FLOAT_FIELDS:
        if not math.isfinite(getattr(event, name)):
            raise ValueError(f"{name} is not a finite number")
    if not 0.0 <= event.ts < _MAX_TS:
        raise ValueError("ts is not a plausible epoch time")
    for name in _TEXT_FIELDS:
        if "\x00" in getattr(event, name):
            raise ValueError(f"{name} contains a NUL character")
