"""The production bus: events buffered per worker and XADDed to a Redis stream in pipelined
batches, spilling to a local spool while Redis is down or slow."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from proxy.bus.spool import Spool
from shared.events import RequestEvent
from shared.streams import EVENT_FIELD

log = logging.getLogger("llm_proxy.bus")

_DROP_LOG_INTERVAL = 10.0  # seconds between "events dropped" log lines


class RedisStreamsBus:
    """``publish`` appends to a bounded deque and returns. One task sends the deque to the
    stream (no MAXLEN: trimming is the dispatcher's job, below what every group acknowledged).

    When a send fails or times out, the batch and everything buffered go to the spool and the
    bus keeps spooling until Redis answers again; it then replays the spool in order before
    sending new events directly, so the stream sees events in the order they were published
    (a batch that was in flight when Redis failed may land after events spilled meanwhile).
    Events past the spool's cap are dropped, counted and logged at most every 10 seconds.
    A retried XADD may append an event twice: its event id makes the copy harmless.

    The sender cannot die silently: an event that cannot be serialised is dropped, counted
    (``unrecordable``) and logged, and the others go on; any other unexpected error restarts
    the task (counted in ``restarts``, logged with its traceback) with what it held put back."""

    def __init__(
        self,
        redis: aioredis.Redis,
        stream_key: str,
        spool: Spool,
        *,
        capacity: int = 1000,
        batch_size: int = 500,
        linger: float = 0.005,
        send_timeout: float = 2.0,
        close_timeout: float = 5.0,
        adopt_interval: float = 30.0,
        owns_redis: bool = False,
    ) -> None:
        self.redis = redis
        self.stream_key = stream_key
        self.spool = spool
        self.capacity = capacity
        self.batch_size = batch_size
        self.linger = linger
        self.send_timeout = send_timeout
        self.close_timeout = close_timeout
        self.adopt_interval = adopt_interval
        self.owns_redis = owns_redis
        self.published = 0
        self.spooled = 0
        self.dropped = 0
        self.unrecordable = 0
        self.restarts = 0
        self.redis_ok = True
        self._buffer: deque[RequestEvent] = deque()
        self._inflight: list[RequestEvent] = []
        self._spooling = False  # our own events are routed through the spool until replayed
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._first_at = 0.0  # when the oldest buffered event arrived (for the linger)
        self._retry_at = 0.0
        self._backoff = 0.0
        self._next_adopt = 0.0
        self._drops_logged = 0
        self._drop_log_at = 0.0

    # --- the proxy's side: never waits ---

    async def start(self) -> None:
        self.spool.open()
        self._task = asyncio.create_task(self._supervise(), name="redis-streams-bus")

    def publish(self, event: RequestEvent) -> None:
        buffer = self._buffer
        if len(buffer) < self.capacity and self._task is not None:
            buffer.append(event)
            if len(buffer) == 1:
                self._first_at = time.monotonic()
                self._wake.set()
            elif len(buffer) == self.batch_size:
                self._wake.set()
            return
        # Full: the sender is stuck on a slow or dead Redis. Move the backlog to disk now,
        # oldest first, rather than lose anything.
        self._spooling = True
        pending = [*buffer, event]
        buffer.clear()
        self._spill(pending)

    def can_record(self) -> bool:
        """True when this event would be kept even if Redis failed right now: the spool has
        room for it and everything held in memory. Without a usable spool, only a healthy
        Redis with room in the buffer can take it."""
        if self._closing:
            return False
        if self.spool.broken:
            return self.redis_ok and not self._spooling and len(self._buffer) < self.capacity
        return self.spool.room_for(self.buffered() + 1)

    def buffered(self) -> int:
        return len(self._buffer) + len(self._inflight)

    def pending(self) -> int:
        return self.buffered() + self.spool.pending_events()

    async def close(self) -> None:
        """Send what is buffered (or spool it if Redis is down), then stop. Spooled events
        that could not be replayed in time stay on disk for the next worker to replay."""
        self._closing = True
        self._wake.set()
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
        if self.owns_redis:
            await self.redis.aclose()

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
            # the stream is absorbed by its event id.
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
            if self._spooling and self._buffer and not self.spool.broken:
                spill = list(self._buffer)
                self._buffer.clear()
                self._spill(spill)
            progressed = False
            if time.monotonic() >= self._retry_at:
                if self.spool.has_backlog():
                    progressed = await self._replay()
                # Nothing of ours left on disk: send directly (a failure spools again).
                if (
                    self._spooling
                    and not self.spool.own_backlog()
                    and (self.redis_ok or not self.spool.has_backlog())
                ):
                    self._spooling = False
                if self._buffer and not self._spooling and self._due():
                    progressed = await self._send_buffer() or progressed
            if self._closing and (not self.redis_ok or self._drained()):
                return  # close() spools whatever is left rather than wait for Redis
            if not progressed:
                await self._idle()

    def _due(self) -> bool:
        if self._closing or len(self._buffer) >= self.batch_size:
            return True
        return time.monotonic() - self._first_at >= self.linger

    def _drained(self) -> bool:
        return not self._buffer and not self.spool.has_backlog()

    async def _idle(self) -> None:
        now = time.monotonic()
        if now < self._retry_at:
            timeout = self._retry_at - now
        elif self._buffer and not self._spooling:
            timeout = max(0.0, self._first_at + self.linger - now)
        else:
            timeout = max(0.0, self._next_adopt - now)
        self._wake.clear()
        if self._closing or len(self._buffer) >= self.batch_size:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _send_buffer(self) -> bool:
        take = min(self.batch_size, len(self._buffer))
        self._inflight, lines = self._encode([self._buffer.popleft() for _ in range(take)])
        started = time.monotonic()
        ok = await self._xadd(lines)
        batch, self._inflight = self._inflight, []
        self._first_at = started  # what arrived meanwhile has waited since then
        if ok:
            self.published += len(batch)
            return True
        if self.spool.broken:
            self._buffer.extendleft(reversed(batch))  # keep them while memory allows
            return False
        spill = [*batch, *self._buffer]
        self._buffer.clear()
        self._spill(spill)
        return False

    async def _replay(self) -> bool:
        chunk = self.spool.read_chunk(self.batch_size)
        if chunk is None:
            return False
        if chunk.lines and not await self._xadd(chunk.lines):
            return False
        self.spool.consume(chunk)
        self.published += len(chunk.lines)
        return True

    async def _xadd(self, lines: list[bytes]) -> bool:
        pipe = self.redis.pipeline(transaction=False)
        size = 0
        for line in lines:
            size += len(line)
            pipe.xadd(self.stream_key, {EVENT_FIELD: line})
        self.spool.observe(size, len(lines))
        try:
            await asyncio.wait_for(pipe.execute(), self.send_timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            self._redis_failed(exc)
            return False
        if not self.redis_ok:
            log.info("Redis is reachable again; events flow to the stream")
        self.redis_ok = True
        self._backoff = 0.0
        return True

    def _redis_failed(self, exc: BaseException) -> None:
        if self.redis_ok:
            log.error(
                "cannot append events to the Redis stream (%s); spooling them to %s",
                type(exc).__name__ if not str(exc) else exc,
                self.spool.directory,
            )
        self.redis_ok = False
        self._spooling = True
        self._backoff = min(max(self._backoff * 2, 0.1), 5.0)
        self._retry_at = time.monotonic() + self._backoff * random.uniform(0.5, 1.0)

    def _encode(self, events: list[RequestEvent]) -> tuple[list[RequestEvent], list[bytes]]:
        """The events that serialise, and their lines; the others are dropped and counted."""
        kept, lines = [], []
        for event in events:
            try:
                lines.append(event.to_bytes())
                kept.append(event)
            except Exception as exc:  # one bad event must not hold back the others
                self.unrecordable += 1
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
        _, lines = self._encode(events)
        written = self.spool.append(lines)
        self.spooled += written
        lost = len(lines) - written
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
