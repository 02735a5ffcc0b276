"""Writing one batch of stream entries to the database: decode, insert, aggregate, commit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from dispatcher import deadletter
from dispatcher.entries import Entry
from shared.events import ACCEPTED, RequestEvent
from shared.store import SqlStore
from shared.store.models import DeadLetter
from shared.store.row_errors import is_row_error

Decoded = tuple[Entry, RequestEvent]


@dataclass(slots=True)
class Outcome:
    """What a batch became once committed."""

    inserted: list[RequestEvent] = field(default_factory=list)
    duplicates: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    #: Events to hand to the export sinks: the ones inserted now, plus duplicates that arrived
    #: on a redelivered entry (a dispatcher may have died after the commit, before exporting).
    export: list[RequestEvent] = field(default_factory=list)
    transactions: int = 0


class BatchWriter:
    """Turns entries into one transaction: rows (duplicates skipped), the aggregates of the
    rows inserted, and dead letters for entries that cannot be recorded. Raises on a
    database failure, leaving nothing written; the caller retries the same entries."""

    def __init__(
        self, store: SqlStore, *, stream_key: str, consumer: str, max_deliveries: int
    ) -> None:
        self.store = store
        self.stream_key = stream_key
        self.consumer = consumer
        self.max_deliveries = max_deliveries

    def _dead(self, entry: Entry, reason: str, error: str, event_id: str = "") -> DeadLetter:
        return deadletter.dead_letter(
            entry,
            stream_key=self.stream_key,
            reason=reason,
            error=error,
            consumer=self.consumer,
            event_id=event_id,
        )

    def sort(
        self, entries: Sequence[Entry]
    ) -> tuple[list[tuple[Entry, RequestEvent]], list[DeadLetter]]:
        """Split entries into storable events and dead letters (pure; no I/O)."""
        good: list[Decoded] = []
        dead: list[DeadLetter] = []
        for entry in entries:
            entry.decode(uuid_ids=self.store.uuid_ids)
            event = entry.event
            if event is None:
                dead.append(self._dead(entry, deadletter.UNDECODABLE, entry.error))
                continue
            if entry.deliveries > self.max_deliveries:
                error = (
                    f"delivered {entry.deliveries} times without being acknowledged "
                    f"(--max-deliveries {self.max_deliveries})"
                )
                dead.append(self._dead(entry, deadletter.MAX_DELIVERIES, error, event.event_id))
                continue
            good.append((entry, event))
        return good, dead

    async def write(self, entries: Sequence[Entry], *, retried: bool = False) -> Outcome:
        """``retried``: an earlier attempt at these entries failed, possibly after committing
        part of them (a refused row splits the batch), so export duplicates too."""
        good, dead = self.sort(entries)
        outcome = Outcome(dead_letters=dead)
        await self._write(good, dead, outcome)
        inserted_ids = {e.event_id for e in outcome.inserted}
        seen: set[str] = set()
        for entry, event in good:
            if event.event_id in seen or event.phase == ACCEPTED:
                continue  # sinks get a request once it is over (its final event)
            seen.add(event.event_id)
            if event.event_id in inserted_ids or retried or entry.deliveries > 1:
                outcome.export.append(event)
        outcome.duplicates = len(good) - len(outcome.inserted) - _rejected(outcome)
        return outcome

    async def _write(self, good: list[Decoded], dead: list[DeadLetter], outcome: Outcome) -> None:
        """One transaction for everything; if the database refuses a row, find it by halving
        (each half its own transaction) and turn it into a dead letter."""
        outcome.transactions += 1
        try:
            inserted = await self.store.record_batch([event for _, event in good], dead)
        except Exception as exc:
            if not is_row_error(exc) or not good:
                raise
            if len(good) == 1:
                entry, event = good[0]
                error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                letter = self._dead(entry, deadletter.REJECTED, error, event.event_id)
                outcome.dead_letters.append(letter)
                await self._write([], [*dead, letter], outcome)
                return
            half = len(good) // 2
            await self._write(good[:half], dead, outcome)
            await self._write(good[half:], [], outcome)
            return
        outcome.inserted.extend(inserted)


def _rejected(outcome: Outcome) -> int:
    return sum(1 for d in outcome.dead_letters if d.reason == deadletter.REJECTED)
