"""The lean client on a Redis Cluster: one multiplexed connection per node, commands routed by
their key's slot, MOVED and ASK followed, the slot map read again after any sign of change."""

from __future__ import annotations

import asyncio
import binascii
import time
from typing import Any

from redis.exceptions import ConnectionError, ResponseError, TimeoutError

from proxy.redis_client import Arg, FastRedis
from shared.config import RedisSettings

SLOTS = 16384
_REDIRECTS = 5  # a slot moves once per resharding step; more hops means the map is churning
_REFRESH_EVERY = 0.25  # fewest seconds between two reads of the slot map


def key_slot(key: Arg) -> int:
    """Redis Cluster's slot of ``key``: CRC16 (XMODEM) of its hash tag, mod 16384."""
    data = key if isinstance(key, bytes) else str(key).encode()
    start = data.find(b"{")
    if start != -1:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return binascii.crc_hqx(data, 0) % SLOTS


def _first_key(args: tuple[Arg, ...]) -> Arg | None:
    name = args[0].upper() if isinstance(args[0], str) else args[0]
    if name in ("EVALSHA", "EVAL", b"EVALSHA", b"EVAL"):
        return args[3] if int(args[2]) > 0 else None
    if name in ("PING", "SCRIPT", b"PING", b"SCRIPT") or len(args) < 2:
        return None
    return args[1]


def _redirect(text: str) -> tuple[int, tuple[str, int]]:
    """(slot, node) from ``MOVED 3999 127.0.0.1:6381`` or ``ASK ...``."""
    _, slot, address = text.split(" ", 2)
    host, _, port = address.rpartition(":")
    return int(slot), (host.strip("[]"), int(port))


class ClusterFastRedis(FastRedis):
    """``FastRedis`` with the same calls, spread over the Cluster's masters. Every key of one
    command must share a slot (the callers' keys carry hash tags so they do). A node that
    fails or answers CLUSTERDOWN/TRYAGAIN raises ``ConnectionError``, as a lost standalone
    server does, so every caller's fallback applies unchanged; the slot map is read again
    (from any reachable node) before the next command."""

    def __init__(self, redis: RedisSettings, *, timeout: float = 1.0) -> None:
        super().__init__(redis, timeout=timeout)
        self._clients: dict[tuple[str, int], FastRedis] = {}
        self._slots: list[tuple[str, int] | None] = [None] * SLOTS
        self._known: list[tuple[str, int]] = list(redis.nodes)
        self._stale = True
        self._refreshed_at = -1e9
        self._refreshing: asyncio.Future[None] | None = None

    async def command(self, *args: Arg) -> Any:
        if self._stale and time.monotonic() - self._refreshed_at >= _REFRESH_EVERY:
            await self._refresh()
        key = _first_key(args)
        node = self._slots[key_slot(key)] if key is not None else None
        node = node or self._known[0]
        asking = False
        for _ in range(_REDIRECTS):
            client = self._client(node)
            try:
                return await (client.asking(*args) if asking else client.command(*args))
            except ResponseError as exc:
                text = str(exc)
                if text.startswith("MOVED "):
                    slot, node = _redirect(text)
                    self._slots[slot] = node
                    self._stale = True  # one slot moved: likely more did
                    asking = False
                    continue
                if text.startswith("ASK "):
                    _, node = _redirect(text)
                    asking = True
                    continue
                if text.startswith(("CLUSTERDOWN", "TRYAGAIN")):
                    self._stale = True
                    raise ConnectionError(text) from None
                raise
            except (ConnectionError, TimeoutError, OSError):
                self._stale = True
                raise
        self._stale = True
        raise ConnectionError(f"Redis Cluster redirected a command more than {_REDIRECTS} times")

    async def pipeline(self, commands: list[tuple[Arg, ...]]) -> list[Any]:
        """Each command to its slot's node (redirects followed one by one); the nodes' shares
        go out in the same tick, so each node still gets one write."""
        replies = await asyncio.gather(
            *(self.command(*args) for args in commands), return_exceptions=True
        )
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return replies

    async def replicated(
        self, commands: list[tuple[Arg, ...]], replicas: int, timeout_ms: int
    ) -> list[int]:
        """Each master's share of ``commands`` and a WAIT after it on that master's connection
        (WAIT covers its own connection's writes), all masters at once. No redirect is
        followed: a MOVED or ASK raises, the slot map is read again before the next call, and
        the caller sends the whole batch again (a write a redirect sent elsewhere would not be
        covered by the WAIT)."""
        if self._stale and time.monotonic() - self._refreshed_at >= _REFRESH_EVERY:
            await self._refresh()
        shares: dict[tuple[str, int], list[tuple[Arg, ...]]] = {}
        for args in commands:
            key = _first_key(args)
            node = (self._slots[key_slot(key)] if key is not None else None) or self._known[0]
            shares.setdefault(node, []).append(args)
        replies = await asyncio.gather(
            *(
                self._client(node).replicated(share, replicas, timeout_ms)
                for node, share in shares.items()
            ),
            return_exceptions=True,
        )
        counts: list[int] = []
        for reply in replies:
            if isinstance(reply, BaseException):
                self._stale = True
                if isinstance(reply, ResponseError) and str(reply).startswith(
                    ("MOVED ", "ASK ", "CLUSTERDOWN", "TRYAGAIN")
                ):
                    raise ConnectionError(str(reply)) from None
                raise reply
            counts.extend(reply)
        return counts

    def _client(self, node: tuple[str, int]) -> FastRedis:
        client = self._clients.get(node)
        if client is None:
            client = self._clients[node] = FastRedis(
                self.redis.with_node(*node), timeout=self.timeout
            )
        return client

    async def _refresh(self) -> None:
        """Read CLUSTER SLOTS from the first node that answers (known masters, then the seeds);
        concurrent callers share one read."""
        if self._refreshing is not None:
            return await asyncio.shield(self._refreshing)
        self._refreshing = done = asyncio.get_running_loop().create_future()
        try:
            await self._read_slots()
            done.set_result(None)
        except BaseException as exc:
            done.set_exception(exc)
            done.exception()  # retrieved: waiters re-raise it
            raise
        finally:
            self._refreshing = None
            self._refreshed_at = time.monotonic()

    async def _read_slots(self) -> None:
        candidates = list(dict.fromkeys([*self._known, *self.redis.nodes]))
        failure: BaseException | None = None
        for node in candidates:
            try:
                reply = await self._client(node).command("CLUSTER", "SLOTS")
            except (ConnectionError, TimeoutError, OSError, ResponseError) as exc:
                failure = exc
                continue
            slots: list[tuple[str, int] | None] = [None] * SLOTS
            masters: list[tuple[str, int]] = []
            for start, end, master, *_ in reply:
                host = master[0].decode() if master[0] else node[0]  # "": the node we asked
                address = (host, int(master[1]))
                masters.append(address)
                for slot in range(int(start), int(end) + 1):
                    slots[slot] = address
            self._slots = slots
            self._known = list(dict.fromkeys(masters)) or self._known
            self._stale = any(s is None for s in slots)
            for gone in set(self._clients) - set(self._known) - set(self.redis.nodes):
                await self._clients.pop(gone).aclose()
            return
        raise ConnectionError(f"no Redis Cluster node answered ({failure})")

    async def script_load(self, script: str) -> str:
        """Load on every master: EVALSHA may land on any of them."""
        if self._stale:
            await self._refresh()
        shas = await asyncio.gather(*(self._client(n).script_load(script) for n in self._known))
        return shas[0]

    async def ping(self) -> bool:
        return bool(await self.command("PING") == b"PONG")

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
