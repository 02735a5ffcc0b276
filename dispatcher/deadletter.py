"""Dead letters: entries that cannot be recorded, kept with their payload, and their replay."""

from __future__ import annotations

from dataclasses import dataclass, field

from dispatcher.entries import Entry, decode
from shared.store import SqlStore
from shared.store.models import DeadLetter
from shared.streams import EVENT_FIELD

#: Why an entry became a dead letter.
UNDECODABLE = "undecodable"  # not an event we can read, or values no column can hold
REJECTED = "rejected"  # the database refused it on its own (a data error no retry can fix)
MAX_DELIVERIES = "max_deliveries"  # handed out too often without an ack: it kills dispatchers
REASONS = (UNDECODABLE, REJECTED, MAX_DELIVERIES)


def _text(value: str, limit: int = 2000) -> str:
    return value.replace("\x00", "\\0")[:limit]


def dead_letter(
    entry: Entry, *, stream_key: str, reason: str, error: str, consumer: str, event_id: str = ""
) -> DeadLetter:
    return DeadLetter(
        stream_key=stream_key,
        entry_id=entry.entry_id,
        reason=reason,
        error=_text(error),
        deliveries=entry.deliveries,
        consumer=_text(consumer, 200),
        payload=entry.payload,
        event_id=_text(event_id, 100),
    )


@dataclass(slots=True)
class ReplayReport:
    replayed: list[int] = field(default_factory=list)
    inserted: int = 0
    failed: dict[int, str] = field(default_factory=dict)


async def replay_dead_letters(
    store: SqlStore, *, ids: list[int], reason: str | None, limit: int
) -> ReplayReport:
    """Record dead letters whose payload is (now) a storable event, straight into the database,
    each marked replayed in the same transaction. An event already recorded counts once."""
    report = ReplayReport()
    letters = await store.list_dead_letters(ids=ids, reason=reason, limit=limit)
    for letter in letters:
        assert letter.id is not None
        try:
            # The dispatcher's own rules (its size cap included): replay records nothing the
            # pipeline would have turned away.
            entry = Entry(letter.entry_id, {EVENT_FIELD: letter.payload})
            event = decode(entry, uuid_ids=store.uuid_ids)
        except ValueError as exc:
            report.failed[letter.id] = str(exc)
            continue
        try:
            async with store.transaction() as tx:
                inserted = await store.insert_events(tx, [event])
                await store.apply_usage(tx, inserted)
                await store.mark_dead_letter_replayed(tx, letter.id)
        except Exception as exc:  # one bad letter must not stop the others
            report.failed[letter.id] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            continue
        report.replayed.append(letter.id)
        report.inserted += len(inserted)
    return report
