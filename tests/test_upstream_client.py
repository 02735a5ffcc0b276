"""The upstream HTTP/1.1 client against scripted servers on loopback: keep-alive, the pool's
limit and queue, stale-connection retry, body framings, flow control, timeouts, TLS."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.upstream import Upstream
from shared.config import Settings
from shared.errors import Overloaded, UpstreamError, UpstreamTimeout

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]


class Server:
    """A scripted HTTP server: ``handler`` runs once per connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        body = b""
        lower = head.lower()
        if b"content-length:" in lower:
            length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
        elif b"transfer-encoding: chunked" in lower:
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        self.requests.append(head + body)
        return head + body

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


async def keep_answering(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
) -> None:
    while True:
        await server.read_request(reader)
        writer.write(OK)
        await writer.drain()


def client(**env: str) -> Upstream:
    settings = Settings.from_env({"UPSTREAM_READ_TIMEOUT": "2s", **env})
    return Upstream(settings)


async def started(upstream: Upstream) -> Upstream:
    await upstream.start()
    return upstream


async def get(
    upstream: Upstream,
    port: int,
    method: str = "GET",
    body: object = None,
    length: int | None = None,
    scheme: str = "http",
) -> tuple[int, bytes]:
    response = await upstream.request(
        method,
        f"{scheme}://127.0.0.1:{port}/v1",
        b"/models",
        {"accept": "*/*"},
        body,
        length,  # type: ignore[arg-type]
    )
    chunks = []
    while chunk := await response.read(65536):
        chunks.append(chunk)
    response.release()
    return response.status, b"".join(chunks)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    u = await started(client())
    yield u
    await u.close()


async def test_keep_alive_reuses_one_connection(upstream: Upstream) -> None:
    server = await Server(keep_answering).start()
    for _ in range(5):
        assert await get(upstream, server.port) == (200, b"{}")
    assert server.connections == 1
    assert server.requests[0].startswith(b"GET /v1/models HTTP/1.1\r\nhost: 127.0.0.1:")
    await server.stop()


async def test_pool_limit_queues_and_acquire_timeout_is_503() -> None:
    gate = asyncio.Event()
    active = {"now": 0, "max": 0}

    async def slow(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
    ) -> None:
        while True:
            await server.read_request(reader)
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
            await gate.wait()
            active["now"] -= 1
            writer.write(OK)
            await writer.drain()

    server = await Server(slow).start()
    upstream = await started(client(POOL_MAX_CONNECTIONS="2", POOL_ACQUIRE_TIMEOUT="300ms"))
    tasks = [asyncio.create_task(get(upstream, server.port)) for _ in range(2)]
    await asyncio.sleep(0.1)
    with pytest.raises(Overloaded) as info:
        await get(upstream, server.port)  # both connections busy: waits, then gives up
    assert info.value.status == 503 and info.value.headers["retry-after"] == "1"
    queued = [asyncio.create_task(get(upstream, server.port)) for _ in range(4)]
    await asyncio.sleep(0.05)
    gate.set()
    assert [await t for t in tasks + queued] == [(200, b"{}")] * 6
    assert active["max"] == 2 and server.connections == 2
    await upstream.close()
    await server.stop()


async def test_a_stale_keep_alive_connection_is_retried_once(upstream: Upstream) -> None:
    async def one_answer_per_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
    ) -> None:
        await server.read_request(reader)
        writer.write(OK)
        await writer.drain()
        await server.read_request(reader)  # the next request on this connection: hang up

    server = await Server(one_answer_per_connection).start()
    for _ in range(3):
        assert await get(upstream, server.port, "POST", b'{"x":1}') == (200, b"{}")
    assert server.connections == 3
    await server.stop()


async def test_streamed_bodies_are_chunked_or_sized(upstream: Upstream) -> None:
    server = await Server(keep_answering).start()

    async def parts() -> AsyncIterator[bytes]:
        for i in range(3):
            yield b"part%d;" % i

    assert await get(upstream, server.port, "POST", parts()) == (200, b"{}")
    assert b"transfer-encoding: chunked" in server.requests[-1]
    assert server.requests[-1].endswith(b"part0;part1;part2;")
    assert await get(upstream, server.port, "POST", parts(), length=18) == (200, b"{}")
    assert b"content-length: 18" in server.requests[-1]
    assert server.connections == 1
    await server.stop()


@pytest.mark.parametrize(
    ("reply", "body"),
    [
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            b"abcde",
        ),
        (
            b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2"
            b"\r\n\r\nok",
            b"ok",
        ),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
    ],
)
async def test_body_framings(upstream: Upstream, reply: bytes, body: bytes) -> None:
    async def answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
    ) -> None:
        while True:
            await server.read_request(reader)
            writer.write(reply)
            await writer.drain()

    server = await Server(answer).start()
    for _ in range(2):
        status, got = await get(upstream, server.port)
        assert status in (200, 204) and got == body
    assert server.connections == 1  # the connection stayed usable
    await server.stop()


async def test_a_body_without_length_ends_with_the_connection(upstream: Upstream) -> None:
    async def close_delimited(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end")
        await writer.drain()

    server = await Server(close_delimited).start()
    assert await get(upstream, server.port) == (200, b"until the end")
    assert await get(upstream, server.port) == (200, b"until the end")
    assert server.connections == 2
    await server.stop()


async def test_head_answers_carry_no_body(upstream: Upstream) -> None:
    async def head(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
    ) -> None:
        while True:
            request = await server.read_request(reader)
            if request.startswith(b"HEAD"):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n")
            else:
                writer.write(OK)
            await writer.drain()

    server = await Server(head).start()
    assert await get(upstream, server.port, "HEAD") == (200, b"")
    assert await get(upstream, server.port) == (200, b"{}")
    assert server.connections == 1
    await server.stop()


async def test_large_bodies_flow_through_with_back_pressure(upstream: Upstream) -> None:
    big = b"x" * (3 * 1024 * 1024)

    async def large(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(big) + big)
        await writer.drain()
        await server.read_request(reader)

    server = await Server(large).start()
    response = await upstream.request("GET", f"http://127.0.0.1:{server.port}/v1", b"/f", {}, None)
    await asyncio.sleep(0.2)  # the reader dawdles: the socket must be paused, not buffered
    got = bytearray()
    while chunk := await response.read(32768):
        assert len(chunk) <= 32768
        got += chunk
    response.release()
    assert bytes(got) == big
    await server.stop()


async def test_silence_is_a_timeout() -> None:
    async def stall(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
    ) -> None:
        request = await server.read_request(reader)
        if b"/v1/half" in request:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf")
            await writer.drain()
        await asyncio.sleep(5)

    server = await Server(stall).start()
    upstream = await started(client(UPSTREAM_READ_TIMEOUT="300ms"))
    with pytest.raises(UpstreamTimeout):
        await get(upstream, server.port)
    response = await upstream.request(
        "GET", f"http://127.0.0.1:{server.port}/v1", b"/half", {}, None
    )
    assert await response.read(100) == b"half"
    with pytest.raises(UpstreamTimeout):
        await response.read(100)
    response.release()
    await upstream.close()
    await server.stop()


async def test_total_timeout_cuts_a_slow_stream() -> None:
    async def trickle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(50):
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)

    server = await Server(trickle).start()
    upstream = await started(client(UPSTREAM_TIMEOUT="400ms"))
    with pytest.raises(UpstreamTimeout):
        await get(upstream, server.port)
    await upstream.close()
    await server.stop()


async def test_refused_and_malformed_are_upstream_errors(upstream: Upstream) -> None:
    async def garbage(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
    ) -> None:
        await server.read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    server = await Server(garbage).start()
    with pytest.raises(UpstreamError):
        await get(upstream, server.port)
    await server.stop()
    with pytest.raises(UpstreamError):
        await get(upstream, server.port)  # nobody listens there any more


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_upstream_with_a_configured_ca(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    server = await Server(keep_answering).start(server_ctx)
    trusting = await started(client(UPSTREAM_CA_FILE=str(cert)))
    assert await get(trusting, server.port, scheme="https") == (200, b"{}")
    assert await get(trusting, server.port, scheme="https") == (200, b"{}")
    assert server.connections == 1
    await trusting.close()
    default = await started(client())
    with pytest.raises(UpstreamError):  # the system store does not know this certificate
        await get(default, server.port, scheme="https")
    await default.close()
    await server.stop()


async def test_warm_opens_connections_before_any_request() -> None:
    server = await Server(keep_answering).start()
    upstream = await started(client(POOL_MIN_CONNECTIONS="3"))
    await upstream.warm([f"http://127.0.0.1:{server.port}/v1"])
    await asyncio.sleep(0.05)
    assert server.connections == 3
    for _ in range(3):
        assert await get(upstream, server.port) == (200, b"{}")
    assert server.connections == 3
    await upstream.close()
    await server.stop()
