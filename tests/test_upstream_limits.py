"""What an upstream may send back, and connection reuse, against scripted servers on loopback: a
response head over UPSTREAM_MAX_HEADER_BYTES or UPSTREAM_MAX_HEADERS is a 502 and its connection
is closed; a malformed answer is a 502 on a connection never reused; a connection older than
UPSTREAM_CONNECTION_MAX_AGE is not reused."""

from __future__ import annotations

import asyncio

import pytest

from proxy.upstream import Upstream
from shared.errors import UpstreamError
from tests.test_upstream_client import OK, Server, client, get, started


def head_with(headers: list[bytes]) -> bytes:
    lines = b"".join(h + b"\r\n" for h in headers)
    return b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n" + lines + b"\r\n{}"


def answering(reply: bytes, closed: asyncio.Event) -> object:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
    ) -> None:
        await server.read_request(reader)
        writer.write(reply)
        await writer.drain()
        await reader.read()  # until the client closes its end
        closed.set()

    return handler


@pytest.mark.parametrize(
    "reply",
    [
        head_with([b"x-many-%d: v" % i for i in range(101)]),
        head_with([b"x-big: " + b"a" * 70_000]),
        head_with([b"x-h-%d: %b" % (i, b"b" * 1000) for i in range(70)]),
    ],
    ids=["101-headers", "one-70kb-header", "70kb-in-70-headers"],
)
async def test_a_response_head_over_the_caps_is_502_and_closes(reply: bytes) -> None:
    closed = asyncio.Event()
    server = await Server(answering(reply, closed)).start()  # type: ignore[arg-type]
    upstream = await started(client())
    with pytest.raises(UpstreamError) as info:
        await get(upstream, server.port)
    assert info.value.status == 502
    assert "too large" in info.value.message
    await asyncio.wait_for(closed.wait(), 30)  # the upstream saw its connection closed
    await upstream.close()
    await server.stop()


async def test_a_head_that_never_ends_is_cut_at_the_cap_without_waiting_for_it() -> None:
    """A 100 MB header arriving slowly: refused once 64 KiB are in, not buffered whole, and
    well before the read timeout (which would be a 504)."""
    closed = asyncio.Event()

    async def endless(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nx-huge: ")
        try:
            while not closed.is_set():
                writer.write(b"a" * 8192)
                await writer.drain()
        except ConnectionError:
            closed.set()

    server = await Server(endless).start()
    upstream = await started(client(UPSTREAM_READ_TIMEOUT="600s"))
    with pytest.raises(UpstreamError, match="too large"):
        await get(upstream, server.port)
    await asyncio.wait_for(closed.wait(), 30)
    await upstream.close()
    await server.stop()


async def test_heads_within_the_caps_pass_and_the_caps_are_settings() -> None:
    reply = head_with([b"x-h-%d: v" % i for i in range(98)])
    server = await Server(keep(reply)).start()  # type: ignore[arg-type]
    upstream = await started(client())
    assert await get(upstream, server.port) == (200, b"{}")
    await upstream.close()
    tight = await started(client(UPSTREAM_MAX_HEADERS="10"))
    with pytest.raises(UpstreamError, match="too large"):
        await get(tight, server.port)
    await tight.close()
    big = head_with([b"x-big: " + b"a" * 100_000])
    server2 = await Server(keep(big)).start()  # type: ignore[arg-type]
    roomy = await started(client(UPSTREAM_MAX_HEADER_BYTES="256KiB"))
    assert await get(roomy, server2.port) == (200, b"{}")
    await roomy.close()
    await server.stop()
    await server2.stop()


async def test_an_informational_head_does_not_count_against_the_final_one() -> None:
    early = b"HTTP/1.1 103 Early Hints\r\n" + b"".join(b"link: <%d>\r\n" % i for i in range(90))
    reply = early + b"\r\n" + head_with([b"x-h-%d: v" % i for i in range(90)])
    server = await Server(keep(reply)).start()  # type: ignore[arg-type]
    upstream = await started(client())
    assert await get(upstream, server.port) == (200, b"{}")
    await upstream.close()
    await server.stop()


def keep(reply: bytes) -> object:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
    ) -> None:
        while True:
            await server.read_request(reader)
            writer.write(reply)
            await writer.drain()

    return handler


async def test_a_connection_past_its_maximum_age_is_not_reused() -> None:
    server = await Server(keep(OK)).start()  # type: ignore[arg-type]
    young: Upstream = await started(client())
    for _ in range(3):
        assert await get(young, server.port) == (200, b"{}")
    assert server.connections == 1
    await young.close()
    aged = await started(client(UPSTREAM_CONNECTION_MAX_AGE="1ms"))
    for _ in range(3):
        assert await get(aged, server.port) == (200, b"{}")
        await asyncio.sleep(0.01)  # the connection outlives its 1 ms (time passing is the point)
    assert server.connections == 1 + 3  # each request on a freshly resolved connection
    await aged.close()
    await server.stop()


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n"
        b"2\r\n{}\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}x",
        b"HTTP/1.1 200 OK\ncontent-length: 2\n\n{}",
        b"HTTP/1.1 200 OK\r\nx-a: b\r\n c\r\ncontent-length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nx-a: b\x00c\r\ncontent-length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffffff\r\n{}",
    ],
    ids=["cl-and-te", "two-lengths", "bare-lf", "obs-fold", "nul", "oversize-chunk"],
)
async def test_a_malformed_answer_is_502_and_its_connection_never_reused(reply: bytes) -> None:
    server = await Server(keep(reply)).start()  # type: ignore[arg-type]
    upstream = await started(client())
    for attempt in range(1, 3):
        with pytest.raises(UpstreamError, match="malformed"):
            await get(upstream, server.port)
        assert server.connections == attempt  # a fresh connection each time
    await upstream.close()
    await server.stop()


async def test_chunked_that_is_not_the_final_coding_reads_to_the_close() -> None:
    async def gzip_then_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n2\r\n{}")
        await writer.drain()
        writer.close()

    server = await Server(gzip_then_close).start()
    upstream = await started(client())
    assert await get(upstream, server.port) == (200, b"2\r\n{}")  # not de-chunked: not chunked
    assert await get(upstream, server.port) == (200, b"2\r\n{}")
    assert server.connections == 2
    await upstream.close()
    await server.stop()


async def test_bytes_after_a_complete_answer_retire_the_connection() -> None:
    """An upstream that answers one request twice (in one packet): the client gets the first
    answer intact, and the connection is never handed to the next request."""
    extra = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nEVIL!"
    server = await Server(keep(OK + extra)).start()  # type: ignore[arg-type]
    upstream = await started(client())
    assert await get(upstream, server.port) == (200, b"{}")
    assert await get(upstream, server.port) == (200, b"{}")
    assert server.connections == 2
    await upstream.close()
    await server.stop()
