"""The dispatcher's loop: read the stream as one consumer of the group, write, commit, ack.

A reader task keeps up to ``buffer`` entries in memory: first this consumer's own pending
entries (a restart with the same name resumes them), then entries idle too long at other
consumers (XAUTOCLAIM), then new ones (XREADGROUP ``>``). The writer takes batches from that
buffer and, for each: one database transaction, export jobs, XACK; in that order, so an entry
is acknowledged only once its row is committed. Entries held while the database is down are
re-claimed by this consumer every few seconds (XCLAIM JUSTID, which does not count as a
delivery), so a short outage neither loses them to peers nor pushes them towards
--max-deliveries.

Every batch write has a deadline (``write_timeout``): a connection that went silent (a NAT or
load balancer dropped the flow) is a counted, logged failure, not a writer stalled forever.
While writes fail the reader takes nothing new. Once they have failed for ``release_after``
the dispatcher releases what it holds (stops re-claiming it, drops it from memory) so a peer
that can write claims it after ``claim_idle``; it reads again, its own pending list first, once
the database answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from dispatcher.entries import Entry
from dispatcher.maintenance import Upkeep
from dispatcher.metrics import DispatcherMetrics
from dispatcher.options import Options
from dispatcher.partitions import keep_partitions
from dispatcher.sinks import Jobs
from dispatcher.writer import BatchWriter, Outcome
from shared.store import SqlStore

if TYPE_CHECKING:
    from dispatcher.tracing import BatchTracing

log = logging.getLogger("llm_proxy.dispatcher")

T = TypeVar("T")

# RedisClusterException (a slot not covered yet, mid-failover) is not a RedisError in redis-py
_REDIS_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)
_BACKOFF_CAP = 10.0


#: what _write returns once it has released its entries
_RELEASED = object()


async def _within(work: Awaitable[T], seconds: float) -> T:
    """``work`` or TimeoutError after ``seconds``, without waiting for a cancelled database
    call to unwind: on a silent connection that can take as long as the call itself. The pool
    discards the connection once the abandoned call ends."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        task.add_done_callback(_consume)
        raise TimeoutError(f"no answer within {seconds:g}s")
    return task.result()


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: an abandoned call's error is not news


def _id(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entries(rows: list[Any]) -> list[Entry]:
    return [Entry(_id(entry_id), fields or {}) for entry_id, fields in rows]


class Backoff:
    """Doubling delays with jitter, so dispatchers waiting on the same outage spread out."""

    def __init__(self, base: float = 0.1, cap: float = _BACKOFF_CAP) -> None:
        self.base, self.cap, self.attempt = base, cap, 0

    def next(self) -> float:
        delay = min(self.cap, self.base * 2**self.attempt)
        self.attempt += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempt = 0


class Dispatcher:
    def __init__(
        self,
        redis: aioredis.Redis,
        store: SqlStore,
        options: Options,
        *,
        metrics: DispatcherMetrics | None = None,
        jobs: Jobs | None = None,
        retention_days: int = 0,
        keep_partitions: bool = False,
        tracing: BatchTracing | None = None,
    ) -> None:
        self.redis = redis
        self.store = store
        self.options = options
        self.metrics = metrics or DispatcherMetrics()
        self.jobs = jobs if jobs is not None and jobs.sinks() else None
        self.tracing = tracing
        self.keep_partitions = keep_partitions
        self.upkeep = Upkeep(
            redis,
            options,
            self.metrics,
            retention_jobs=jobs if retention_days > 0 else None,
        )
        self.writer = BatchWriter(
            store,
            stream_key=options.stream_key,
            consumer=options.consumer,
            max_deliveries=options.max_deliveries,
        )
        self._queue: deque[Entry] = deque()
        self._held: dict[str, float] = {}  # entry id -> when last read or re-claimed
        self._has_entries = asyncio.Event()
        self._has_room = asyncio.Event()
        self._stopping = asyncio.Event()
        self._writable = asyncio.Event()  # cleared while database writes fail: read nothing
        self._writable.set()
        self._history_from: str | None = "0"  # read our own pending entries first
        self._claim_cursor = "0-0"
        self._next_claim = 0.0
        self._failing: dict[str, float] = {}  # what -> when its failure was last logged

    # --- lifecycle ---

    def stop(self) -> None:
        """Stop reading; finish the batches already read (write, commit, ack), then return."""
        if not self._stopping.is_set():
            log.info("dispatcher %s stopping: finishing the entries in hand", self.options.consumer)
        self._stopping.set()
        self._has_entries.set()
        self._has_room.set()

    async def run(self) -> None:
        await self._retrying(self.ensure_group, "redis")
        reader = asyncio.create_task(self._read_loop(), name="dispatcher-reader")
        helpers = [
            asyncio.create_task(self._keep_alive_loop(), name="dispatcher-keepalive"),
            asyncio.create_task(self.upkeep.run(self._stopping), name="dispatcher-upkeep"),
        ]
        if self.keep_partitions:
            partitions = keep_partitions(self.store, self._stopping)
            helpers.append(asyncio.create_task(partitions, name="dispatcher-partitions"))
        try:
            await self._write_loop(reader)
        finally:
            # The helpers end on their own once stopping; cancelling is the fallback only,
            # since a cancel landing inside a Redis command is not always honoured promptly.
            self._stopping.set()
            _, late = await asyncio.wait([reader, *helpers], timeout=5)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=5)

    async def ensure_group(self) -> bool:
        """Create the group (and the stream) if missing, from the stream's start; True if
        created now."""
        try:
            await self.redis.xgroup_create(
                self.options.stream_key, self.options.group, id="0", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            return False
        log.info("created consumer group %s on %s", self.options.group, self.options.stream_key)
        return True

    # --- reading ---

    async def _read_loop(self) -> None:
        backoff = Backoff()
        while not self._stopping.is_set():
            if not self._writable.is_set():
                await self._sleep(0.2)  # entries read now would only wait, or be released
                continue
            room = self.options.buffer - len(self._queue)
            if room <= 0:
                self._has_room.clear()
                await self._has_room.wait()
                continue
            count = min(self.options.batch_size, room)
            try:
                if self._history_from is not None:
                    entries = await self._read_history(count)
                elif time.monotonic() >= self._next_claim:
                    entries = await self._claim(count)
                else:
                    entries = await self._read_new(count)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):  # LOADING, BUSY, ...: Redis will answer later
                    self._failed("redis", exc)
                    self._history_from = "0"
                    await self._sleep(backoff.next())
                    continue
                log.warning(
                    "consumer group %s is gone (Redis lost its data?); recreating it",
                    self.options.group,
                )
                await self._retrying(self.ensure_group, "redis")
                self._history_from = "0"
                continue
            except _REDIS_ERRORS as exc:
                self._failed("redis", exc)
                # A read may have been delivered without its reply reaching us: those entries
                # sit in our pending list, so read that again once Redis answers.
                self._history_from = "0"
                await self._sleep(backoff.next())
                continue
            backoff.reset()
            self._recovered("redis")
            self._enqueue(entries)

    async def _read_history(self, count: int) -> list[Entry]:
        assert self._history_from is not None
        reply: Any = await self.redis.xreadgroup(
            self.options.group,
            self.options.consumer,
            {self.options.stream_key: self._history_from},
            count=count,
        )
        rows = reply[0][1] if reply else []
        if not rows:
            self._history_from = None
            return []
        self._history_from = _id(rows[-1][0])
        return await self._with_deliveries(_entries(rows))

    async def _claim(self, count: int) -> list[Entry]:
        claimed: Any = await self.redis.xautoclaim(
            self.options.stream_key,
            self.options.group,
            self.options.consumer,
            min_idle_time=int(self.options.claim_idle * 1000),
            start_id=self._claim_cursor,
            count=count,
        )
        next_id, rows = claimed[0], claimed[1]
        self._claim_cursor = _id(next_id)
        if self._claim_cursor == "0-0":  # a full pass over the pending list: rest a while
            self._next_claim = time.monotonic() + max(1.0, self.options.claim_idle / 2)
        entries = [e for e in _entries(rows) if e.entry_id not in self._held]
        if entries:
            self.metrics.claimed.inc(len(entries))
            log.info(
                "claimed %d entries idle for over %.0fs", len(entries), self.options.claim_idle
            )
        return await self._with_deliveries(entries)

    async def _read_new(self, count: int) -> list[Entry]:
        reply: Any = await self.redis.xreadgroup(
            self.options.group,
            self.options.consumer,
            {self.options.stream_key: ">"},
            count=count,
            block=self.options.block_ms,
        )
        return _entries(reply[0][1]) if reply else []

    async def _with_deliveries(self, entries: list[Entry]) -> list[Entry]:
        """Fill in how often each entry was handed out (for --max-deliveries)."""
        if not entries:
            return entries
        rows: Any = await self.redis.xpending_range(
            self.options.stream_key,
            self.options.group,
            min=entries[0].entry_id,
            max=entries[-1].entry_id,
            count=len(entries) + len(self._held),
            consumername=self.options.consumer,
        )
        counts = {_id(r["message_id"]): int(r["times_delivered"]) for r in rows}
        for entry in entries:
            entry.deliveries = counts.get(entry.entry_id, entry.deliveries)
        return entries

    def _enqueue(self, entries: list[Entry]) -> None:
        now = time.monotonic()
        uuid_ids = self.store.uuid_ids
        for entry in entries:
            if entry.entry_id in self._held:
                continue  # re-read after an error while already in hand
            entry.decode(uuid_ids=uuid_ids)  # here, while the writer waits on the database
            self._held[entry.entry_id] = now
            self._queue.append(entry)
        if self._queue:
            self._has_entries.set()

    # --- writing ---

    async def _write_loop(self, reader: asyncio.Task[None]) -> None:
        while True:
            if not self._queue:
                if reader.done():
                    reader.result()  # surface a crash of the reader
                    return
                if self._stopping.is_set():
                    await reader  # it ends after its current read, queueing what that got
                    continue
                self._has_entries.clear()
                await self._has_entries.wait()
                continue
            take = min(self.options.batch_size, len(self._queue))
            batch = [self._queue.popleft() for _ in range(take)]
            self._has_room.set()
            if not await self._handle(batch):
                log.warning(
                    "stopped with %d entries unacknowledged; a peer or the next start takes "
                    "them over",
                    len(batch) + len(self._queue),
                )
                return

    async def _handle(self, batch: list[Entry]) -> bool:
        started = time.monotonic()
        outcome = await self._write(batch)
        if outcome is None:
            return False
        if outcome is _RELEASED:
            return True
        assert isinstance(outcome, Outcome)
        self._record(outcome, len(batch), time.monotonic() - started)
        if self.tracing is not None:
            self.tracing.batch(batch, outcome, time.monotonic() - started)
        if self.jobs is not None and outcome.export:
            jobs, events = self.jobs, outcome.export
            sent = await self._retrying(
                lambda: asyncio.to_thread(jobs.enqueue_export, events), "redis"
            )
            if sent is None:
                return False
            for sink, n in sent.items():
                self.metrics.exports.labels(sink).inc(n)
        if await self._retrying(lambda: self._ack(batch), "redis") is None:
            return False
        for entry in batch:
            self._held.pop(entry.entry_id, None)
        return True

    async def _write(self, batch: list[Entry]) -> Outcome | object | None:
        """The batch's outcome once committed; ``_RELEASED`` if the database failed for
        ``release_after`` (the entries are now a peer's to claim); None once stopping."""
        backoff = Backoff()
        attempts = 0
        failing_since: float | None = None
        while True:
            attempts += 1
            try:
                outcome = await _within(
                    self.writer.write(batch, retried=attempts > 1), self.options.write_timeout
                )
            except Exception as exc:
                self.metrics.write_failures.inc()
                self._writable.clear()
                self._failed("database", exc)
                now = time.monotonic()
                failing_since = failing_since if failing_since is not None else now
                if self._stopping.is_set():
                    return None
                if now - failing_since >= self.options.release_after:
                    await self._release()  # the batch's entries are among those held
                    return _RELEASED
                await self._sleep(backoff.next())
                continue
            self._recovered("database")
            self._writable.set()
            return outcome

    async def _release(self) -> None:
        """Let go of every entry held, then wait until the database answers again."""
        held = len(self._held)
        self._queue.clear()
        self._held.clear()
        self.metrics.released.inc(held)
        log.error(
            "database writes failing for over %.0fs: released %d entries for a peer to claim; "
            "reading nothing until the database answers",
            self.options.release_after,
            held,
        )
        backoff = Backoff()
        while not self._stopping.is_set():
            try:
                await _within(self.store.ping(), self.options.write_timeout)
            except Exception as exc:
                self._failed("database", exc)
                await self._sleep(backoff.next())
                continue
            self._recovered("database")
            self._history_from = "0"  # take back whatever no peer has claimed
            self._writable.set()
            return

    def _record(self, outcome: Outcome, size: int, seconds: float) -> None:
        m = self.metrics
        m.batch_size.observe(size)
        m.batch_seconds.observe(seconds)
        m.rows_inserted.inc(len(outcome.inserted))
        m.duplicates.inc(outcome.duplicates)
        for letter in outcome.dead_letters:
            m.dead_letters.labels(letter.reason).inc()
            log.error(
                "dead letter: entry %s (%s): %s", letter.entry_id, letter.reason, letter.error
            )

    async def _ack(self, batch: list[Entry]) -> int:
        try:
            acked = int(
                await self.redis.xack(
                    self.options.stream_key, self.options.group, *[e.entry_id for e in batch]
                )
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("cannot ack: the consumer group is gone; the rows are committed")
            return 0
        self.metrics.acked.inc(acked)
        return acked

    # --- keeping held entries ours, and the stream tidy ---

    async def _keep_alive_loop(self) -> None:
        interval = max(0.2, self.options.claim_idle / 3)
        while not self._stopping.is_set():
            await self._sleep(interval)
            now = time.monotonic()
            stale = [i for i, t in self._held.items() if now - t >= interval]
            for start in range(0, len(stale), 500):
                chunk = stale[start : start + 500]
                with contextlib.suppress(*_REDIS_ERRORS):
                    await self.redis.xclaim(
                        self.options.stream_key,
                        self.options.group,
                        self.options.consumer,
                        min_idle_time=0,
                        message_ids=cast(list[Any], chunk),
                        justid=True,
                    )
                    for entry_id in chunk:
                        if entry_id in self._held:
                            self._held[entry_id] = now

    async def refresh_stats(self) -> None:
        await self.upkeep.refresh_stats()

    # --- failures ---

    async def _retrying(self, attempt: Callable[[], Awaitable[T]], what: str) -> T | None:
        """Run ``attempt`` (which returns a value, never None) until it succeeds, backing off
        with jitter between failures. Once stopping, one failure ends it: returns None and the
        entries stay pending."""
        backoff = Backoff()
        while True:
            try:
                result = await attempt()
            except Exception as exc:
                if what == "database":
                    self.metrics.write_failures.inc()
                self._failed(what, exc)
                if self._stopping.is_set():
                    return None
                await self._sleep(backoff.next())
                continue
            self._recovered(what)
            return result

    def _failed(self, what: str, exc: BaseException) -> None:
        (self.metrics.set_database if what == "database" else self.metrics.set_redis)(False)
        now = time.monotonic()
        if now - self._failing.get(what, -1e9) >= 30.0:
            self._failing[what] = now
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.error(
                "%s unavailable (%s); holding %d entries and retrying with backoff",
                what,
                message,
                len(self._held),
            )

    def _recovered(self, what: str) -> None:
        if self._failing.pop(what, None) is not None:
            log.info("%s reachable again", what)
        (self.metrics.set_database if what == "database" else self.metrics.set_redis)(True)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
