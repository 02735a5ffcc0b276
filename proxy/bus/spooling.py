"""One bus for both destinations: events buffered per worker and sent in batches to a sink (the
Redis stream or the database), spilling to a local spool while the sink is down or slow."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any, Protocol

from proxy.bus.journal import Journal, JournalOrphan
from proxy.bus.spool import Spool
from shared.events import FINAL, RequestEvent

log = logging.getLogger("llm_proxy.bus")

_DROP_LOG_INTERVAL = 10.0  # seconds between "events dropped" log lines


class Sink(Protocol):
    """Where batches go. ``send`` and ``replay`` raise when the destination cannot take them
    now (the batch is then spooled and retried); they return how many events they refused as
    unrecordable (dropped, logged by the sink)."""

    name: str  # for log lines: "the Redis stream", "the database"

    async def send(self, events: list[RequestEvent], lines: list[bytes]) -> int: ...

    async def replay(self, lines: list[bytes]) -> int: ...

    async def close(self) -> None: ...


class SpoolingBus:
    """``publish`` appends to a bounded deque and returns. One task sends the deque to the sink.

    When a send fails or times out, the batch and everything buffered go to the spool and the
    bus keeps spooling until the sink answers again; it then replays the spool in order before
    sending new events directly, so the sink sees events in the order they were published
    (a batch that was in flight when the sink failed may land after events spilled meanwhile).
    Events past the spool's cap are dropped, counted and logged at most every 10 seconds.
    A retried send may deliver an event twice: its event id makes the copy harmless.

    ``reserve`` keeps room for a request's two events (its ``accepted`` record and its final)
    from then on: ``can_record`` and later reservations count it as held. ``accept`` publishes
    the accepted record (reserving first if the request has not) and waits until it is in the
    sink or the spool, before the request's upstream call. With ``strict`` (reject mode) an
    accepted record is taken only if it and its final are sure to be kept, and an event nobody
    reserved room for (a refusal's) is dropped rather than take a reserved event's room.

    The sender cannot die silently: an event that cannot be serialised is dropped, counted
    (``unrecordable``) and logged, and the others go on; any other unexpected error restarts
    the task (counted in ``restarts``, logged with its traceback) with what it held put back.

    With a ``journal``, ``accept`` writes the accepted record there instead (the request does
    not wait for the sink); the records of requests still running after the journal's
    ``promote_after`` are then published, and a dead worker's unfinished ones are adopted and
    published (proxy/bus/journal.py)."""

    def __init__(
        self,
        sink: Sink,
        spool: Spool,
        *,
        capacity: int = 1000,
        batch_size: int = 500,
        linger: float = 0.005,
        send_timeout: float = 2.0,
        close_timeout: float = 5.0,
        adopt_interval: float = 30.0,
        strict: bool = False,
        journal: Journal | None = None,
    ) -> None:
        self.sink = sink
        self.journal = journal
        self.strict = strict
        self.spool = spool
        self.capacity = capacity
        self.batch_size = batch_size
        self.linger = linger
        self.send_timeout = send_timeout
        self.close_timeout = close_timeout
        self.adopt_interval = adopt_interval
        self.published = 0
        self.spooled = 0
        self.dropped = 0
        self.unrecordable = 0
        self.restarts = 0
        self.sink_ok = True
        self._buffer: deque[RequestEvent] = deque()
        self._inflight: list[RequestEvent] = []
        self._spooling = False  # our own events are routed through the spool until replayed
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._journal_task: asyncio.Task[None] | None = None
        self._journaled: asyncio.Future[bool] | None = None  # the answer of a journaled accept
        self._closing = False
        self._first_at = 0.0  # when the oldest buffered event arrived (for the linger)
        self._retry_at = 0.0
        self._backoff = 0.0
        self._next_adopt = 0.0
        self._drops_logged = 0
        self._drop_log_at = 0.0
        # id(event) -> its accept()'s answer and the timer that gives up on it
        self._waiters: dict[int, tuple[asyncio.Future[bool], asyncio.TimerHandle]] = {}
        # event id -> slots kept for that request's events still to come (its accepted record
        # and its final, or just the final); _slots is their sum
        self._reserved: dict[str, int] = {}
        self._slots = 0
        # id(event) of buffered events that took a reserved slot: the spool writes them even
        # past its cap (the cap decided their request's admission)
        self._owed: set[int] = set()

    @property
    def redis_ok(self) -> bool:  # the name the Redis bus's callers know
        return self.sink_ok

    # --- the proxy's side: never waits (but accept) ---

    async def start(self) -> None:
        self.spool.open()
        self._task = asyncio.create_task(self._supervise(), name=f"event-bus:{self.sink.name}")
        if self.journal is not None:
            self.journal.open()
            self._journal_task = asyncio.create_task(
                self._follow_journal(self.journal), name="event-bus:journal"
            )

    def publish(self, event: RequestEvent) -> None:
        if self.journal is not None and event.phase == FINAL:
            self.journal.finishing(event)
        held = self._reserved.get(event.event_id) if self._reserved else None
        if held is not None:  # it takes its own reserved slot
            self._owed.add(id(event))
            if event.phase == FINAL or held <= 1:
                self._slots -= self._reserved.pop(event.event_id)
            else:
                self._reserved[event.event_id] = held - 1
                self._slots -= 1
        elif self.strict and not self._room(self._slots + 1):
            self.dropped += 1  # unreserved (a refusal): the reserved finals come first
            return
        buffer = self._buffer
        if len(buffer) < self.capacity and self._task is not None:
            buffer.append(event)
            if len(buffer) == 1:
                self._first_at = time.monotonic()
                self._wake.set()
            elif len(buffer) == self.batch_size:
                self._wake.set()
            return
        # Full: the sender is stuck on a slow or dead sink. Move the backlog to disk now,
        # oldest first, rather than lose anything.
        self._spooling = True
        pending = [*buffer, event]
        buffer.clear()
        self._spill(pending)

    def accept(self, event: RequestEvent) -> asyncio.Future[bool]:
        """Publish ``event`` now; the future says once the sink or the spool holds it: True
        then, False if it is only in memory (or lost). Reserves room for the request's final
        event. Nothing waits here, so the caller can do other I/O before awaiting the answer."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._closing:
            return _answered(loop, False)
        # Decided before any await, so concurrent requests see each other's reservations.
        if event.event_id not in self._reserved and not self.reserve(event.event_id):
            if not self.strict:  # kept anyway (its final is counted as held), answered False
                self._reserved[event.event_id] = 2
                self._slots += 2
                self.publish(event)
            return _answered(loop, False)
        if self.journal is not None and self.journal.begin(event):
            # the common case: one answer, already given, shared by every such request
            journaled = self._journaled
            if journaled is None or journaled.get_loop() is not loop:
                journaled = self._journaled = _answered(loop, True)
            return journaled
        return self._keep(event, loop.create_future())

    def _keep(
        self, event: RequestEvent, answer: asyncio.Future[bool] | None = None
    ) -> asyncio.Future[bool]:
        """Publish ``event``; the future says once the sink or the spool holds it."""
        loop = asyncio.get_running_loop()
        if answer is None:
            answer = loop.create_future()
        key = id(event)
        # A sender that cannot make progress (failing and being restarted) must not hold the
        # request forever: past two sends' worth of time the event counts as not kept.
        timer = loop.call_later(2 * self.send_timeout + 1, self._give_up, key)
        self._waiters[key] = (answer, timer)
        self.publish(event)
        if self._spooling and self._buffer and not self.spool.broken:
            # The sink is known to be down: to disk now, in order, rather than wait for the
            # sender (which may be busy probing the sink for up to send_timeout).
            spill = list(self._buffer)
            self._buffer.clear()
            self._spill(spill)
        self._wake.set()
        return answer

    def _give_up(self, key: int) -> None:
        entry = self._waiters.pop(key, None)
        if entry is not None and not entry[0].done():
            entry[0].set_result(False)

    def reserve(self, event_id: str) -> bool:
        """Keep room for this request's two events (accepted and final) from now on, if there
        is room; its final event releases what is left of it."""
        if self._closing or not self._room(self._slots + 2):
            return False
        self._reserved[event_id] = 2
        self._slots += 2
        return True

    def can_record(self) -> bool:
        """True when this event would be kept even if the sink failed right now: the spool has
        room for it, everything held in memory and the finals of accepted requests. Without a
        usable spool, only a healthy sink with room in the buffer can take it."""
        return not self._closing and self._room(self._slots + 1)

    def _room(self, events: int) -> bool:
        """Whether ``events`` more would be kept on top of what memory holds now."""
        held = self.buffered() + events
        if self.spool.broken:
            return self.sink_ok and not self._spooling and held <= self.capacity
        return self.spool.room_for(held)

    def buffered(self) -> int:
        return len(self._buffer) + len(self._inflight)

    def pending(self) -> int:
        return self.buffered() + self.spool.pending_events()

    async def close(self) -> None:
        """Send what is buffered (or spool it if the sink is down), then stop. Spooled events
        that could not be replayed in time stay on disk for the next worker to replay."""
        self._closing = True
        self._wake.set()
        if self._journal_task is not None:
            self._journal_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._journal_task
            self._journal_task = None
        task, self._task = self._task, None
        if task is not None:
            _, late = await asyncio.wait([task], timeout=self.close_timeout)
            if late:
                # redis-py can lose a cancel that lands inside a command, so wait only as long
                # as one command may take (the socket timeout bounds it), then move on.
                task.cancel()
                _, late = await asyncio.wait([task], timeout=self.send_timeout + 1)
                if late:
                    log.warning("event bus sender did not stop; spooling what it held")
        leftover = [*self._inflight, *self._buffer]
        self._inflight, self._buffer = [], deque()
        self._spill(leftover)
        self.spool.close()
        if self.journal is not None:
            self.journal.close()
        await self.sink.close()

    # --- the sender task ---

    async def _supervise(self) -> None:
        pause = 0.1
        while True:
            try:
                await self._run()
                return
            except Exception:
                self.restarts += 1
                log.exception("event bus sender failed; restarting it (%d so far)", self.restarts)
            # What the failed loop held goes back in front, in order; a copy that did reach
            # the sink is absorbed by its event id.
            self._buffer.extendleft(reversed(self._inflight))
            self._inflight = []
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            if now >= self._next_adopt:
                self._next_adopt = now + self.adopt_interval
                self.spool.adopt(await asyncio.to_thread(self.spool.find_orphans))
            if self._spooling and self._buffer:
                if not self.spool.broken:
                    spill = list(self._buffer)
                    self._buffer.clear()
                    self._spill(spill)
                elif self._waiters:  # held in memory only: their requests must not wait
                    self._settle(self._buffer, False)
            progressed = False
            if time.monotonic() >= self._retry_at:
                if self.spool.has_backlog():
                    progressed = await self._replay()
                # Nothing of ours left on disk: send directly (a failure spools again).
                if (
                    self._spooling
                    and not self.spool.own_backlog()
                    and (self.sink_ok or not self.spool.has_backlog())
                ):
                    self._spooling = False
                if self._buffer and not self._spooling and self._due():
                    progressed = await self._send_buffer() or progressed
            if self._closing and (not self.sink_ok or self._drained()):
                return  # close() spools whatever is left rather than wait for the sink
            if not progressed:
                await self._idle()

    def _due(self) -> bool:
        if self._closing or self._waiters or len(self._buffer) >= self.batch_size:
            return True  # an accepted record's request is waiting: no linger
        return time.monotonic() - self._first_at >= self.linger

    def _drained(self) -> bool:
        return not self._buffer and not self.spool.has_backlog()

    async def _idle(self) -> None:
        now = time.monotonic()
        if now < self._retry_at:
            timeout = self._retry_at - now
        elif self._buffer and not self._spooling:
            timeout = 0.0 if self._waiters else max(0.0, self._first_at + self.linger - now)
        else:
            timeout = max(0.0, self._next_adopt - now)
        self._wake.clear()
        if self._closing or len(self._buffer) >= self.batch_size:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    async def _send_buffer(self) -> bool:
        take = min(self.batch_size, len(self._buffer))
        self._inflight, lines = self._encode([self._buffer.popleft() for _ in range(take)])
        started = time.monotonic()
        refused = await self._deliver(self.sink.send(self._inflight, lines), lines)
        batch, self._inflight = self._inflight, []
        self._first_at = started  # what arrived meanwhile has waited since then
        if refused is not None:
            if self._owed:
                self._owed.difference_update(map(id, batch))
            self.unrecordable += refused
            self.published += len(batch) - refused
            self._settle(batch, True)
            return True
        if self.spool.broken:
            self._buffer.extendleft(reversed(batch))  # keep them while memory allows
            self._settle(batch, False)
            return False
        spill = [*batch, *self._buffer]
        self._buffer.clear()
        self._spill(spill)
        return False

    async def _replay(self) -> bool:
        chunk = self.spool.read_chunk(self.batch_size)
        if chunk is None:
            return False
        refused = 0
        if chunk.lines:
            done = await self._deliver(self.sink.replay(chunk.lines), chunk.lines)
            if done is None:
                return False
            refused = done
        self.spool.consume(chunk)
        self.dropped += chunk.lost
        self.unrecordable += refused
        self.published += len(chunk.lines) - refused
        return True

    async def _deliver(self, sending: Coroutine[Any, Any, int], lines: list[bytes]) -> int | None:
        """Run one send; the events it refused, or None if the sink failed (now spooling)."""
        self.spool.observe(sum(len(line) for line in lines), len(lines))
        try:
            async with asyncio.timeout(self.send_timeout):  # no task per send, as wait_for has
                refused = await sending
        except Exception as exc:
            self._sink_failed(exc)
            return None
        if not self.sink_ok:
            log.info("%s is reachable again; events flow to it", self.sink.name)
        self.sink_ok = True
        self._backoff = 0.0
        return refused

    def _sink_failed(self, exc: BaseException) -> None:
        if self.sink_ok:
            log.error(
                "cannot write events to %s (%s); spooling them to %s",
                self.sink.name,
                type(exc).__name__ if not str(exc) else exc,
                self.spool.directory,
            )
        self.sink_ok = False
        self._spooling = True
        self._backoff = min(max(self._backoff * 2, 0.1), 5.0)
        self._retry_at = time.monotonic() + self._backoff * random.uniform(0.5, 1.0)

    def _settle(
        self, events: list[RequestEvent] | deque[RequestEvent], kept: bool, *, lost: bool = False
    ) -> None:
        """Answer the ``accept`` calls waiting on these events; with the journal, close the
        entries of the requests whose finals are kept (or ``lost``: dropped for good)."""
        journal = self.journal
        if journal is not None and (kept or lost) and journal.open_requests():
            for event in events:
                if event.phase == FINAL:
                    journal.end(event.event_id)
        if not self._waiters:
            return
        for event in events:
            entry = self._waiters.pop(id(event), None)
            if entry is not None:
                entry[1].cancel()
                if not entry[0].done():
                    entry[0].set_result(kept)

    def _encode(self, events: list[RequestEvent]) -> tuple[list[RequestEvent], list[bytes]]:
        """The events that serialise, and their lines; the others are dropped and counted."""
        kept, lines = [], []
        for event in events:
            try:
                lines.append(event.to_bytes())
                kept.append(event)
            except Exception as exc:  # one bad event must not hold back the others
                self.unrecordable += 1
                self._owed.discard(id(event))
                self._settle([event], False, lost=True)
                log.error(
                    "request event %s cannot be serialised (%s): dropped; %d so far",
                    event.event_id,
                    exc,
                    self.unrecordable,
                )
        return kept, lines

    def _spill(self, events: list[RequestEvent]) -> None:
        if not events:
            return
        kept, lines = self._encode(events)
        owed = self._owed
        marks = [id(event) in owed for event in kept] if owed else None
        written = self.spool.append(lines, marks)
        if owed:
            owed.difference_update(map(id, events))
        self._settle([e for e, w in zip(kept, written, strict=True) if w], True)
        self._settle([e for e, w in zip(kept, written, strict=True) if not w], False, lost=True)
        lost = written.count(False)
        self.spooled += len(written) - lost
        if lost:
            self.dropped += lost
            now = time.monotonic()
            if now >= self._drop_log_at:
                log.error(
                    "event spool full or unusable: %d events dropped (%d in total); "
                    "EVENT_SPOOL_MAX_BYTES=%d",
                    self.dropped - self._drops_logged,
                    self.dropped,
                    self.spool.max_bytes,
                )
                self._drops_logged = self.dropped
                self._drop_log_at = now + _DROP_LOG_INTERVAL

    # --- the journal's side ---

    async def _follow_journal(self, journal: Journal) -> None:
        """Publish the accepted records of requests running past ``promote_after``, and adopt
        dead workers' journals (at start, then every ``adopt_interval``)."""
        step = min(max(journal.promote_after / 2, 0.01), 0.25)
        next_adopt = 0.0
        adopting: set[asyncio.Task[None]] = set()
        while True:
            await asyncio.sleep(step)
            try:
                for event in journal.due():
                    self.publish(event)
                if time.monotonic() >= next_adopt and not adopting:
                    next_adopt = time.monotonic() + self.adopt_interval
                    for orphan in await asyncio.to_thread(journal.find_orphans):
                        task = asyncio.create_task(self._recover(journal, orphan))
                        adopting.add(task)
                        task.add_done_callback(adopting.discard)
            except Exception:
                log.exception("the accepted journal's follower failed; going on")

    async def _recover(self, journal: Journal, orphan: JournalOrphan) -> None:
        kept = False
        try:
            events = await asyncio.to_thread(journal.unfinished, orphan)
            answers = [self._keep(event) for event in events]
            kept = all(await asyncio.gather(*answers))
            if events:
                log.warning(
                    "worker %s died with %d requests in flight: their accepted records %s",
                    orphan.owner,
                    len(events),
                    "are published" if kept else "could not all be kept; retried later",
                )
        finally:
            journal.release(orphan, delete=kept)


def _answered(loop: asyncio.AbstractEventLoop, value: bool) -> asyncio.Future[bool]:
    answer: asyncio.Future[bool] = loop.create_future()
    answer.set_result(value)
    return answer
