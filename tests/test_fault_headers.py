"""Fault suite: hostile clients straight at the proxy port (no nginx in front). Oversized and
too many request headers are refused, unfinished heads are closed after the head timeout, and
malformed HTTP gets the JSON error envelope."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import h11
import httpx
import pytest

from shared.crypto import new_key
from tests.proxy_process import UNLIMITED, Provisioned, ProxyProcess, provision
from tests.upstream_fake import FakeUpstream

pytestmark = pytest.mark.fault

HEAD_TIMEOUT = 2  # seconds, REQUEST_HEADER_TIMEOUT for this module's proxy


class Port:
    def __init__(self, proxy: ProxyProcess, cred: Provisioned) -> None:
        self.proxy, self.cred = proxy, cred

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=60)
        return sock


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Port]:
    cwd: Path = tmp_path_factory.mktemp("headers")
    fake = FakeUpstream().start()
    env = {
        **UNLIMITED,
        "ENCRYPTION_KEY": new_key(),
        "HTTP_CACHE_ENABLED": "false",
        "REQUEST_HEADER_TIMEOUT": f"{HEAD_TIMEOUT}s",
    }
    cred = provision(env, cwd, fake.base_url, rpm=0)
    proxy = ProxyProcess(env=env, cwd=cwd, workers=1).start()
    yield Port(proxy, cred)
    proxy.stop()
    fake.stop()


def read_json_error(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, object]]:
    """The server's whole response, parsed by h11, until it closes the connection."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))  # state only
    conn.send(h11.EndOfMessage())
    head: h11.Response | None = None
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(sock.recv(65536))
        elif isinstance(event, h11.Response):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            break
        else:
            raise AssertionError(f"unexpected {event!r}")
    assert head is not None
    headers = {k.decode().lower(): v.decode() for k, v in head.headers}
    return head.status_code, headers, json.loads(body)


def send_all_or_closed(sock: socket.socket, data: bytes) -> bool:
    """Send ``data``; False if the server closed the connection under it."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


def closed_by_server(sock: socket.socket) -> bool:
    try:
        while data := sock.recv(65536):
            del data  # a 408 may come first; the close is what matters
    except ConnectionResetError:
        pass
    return True


def test_a_one_mib_header_is_refused(port: Port) -> None:
    with port.connect() as sock:
        send_all_or_closed(
            sock,
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n",
        )
        status, headers, body = read_json_error(sock)
    assert status == 431
    assert headers["content-type"] == "application/json"
    assert body["error"]["code"] == "request_headers_too_large"  # type: ignore[index]


def test_forty_connections_with_huge_unfinished_heads_are_all_closed(port: Port) -> None:
    """Each tries to send 4 MiB of one header; the server refuses each one long before, so a
    worker never holds more than the head limit per connection."""
    socks = [port.connect() for _ in range(40)]
    try:
        for sock in socks:
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: ")
        piece = b"a" * 65536
        open_ = list(socks)
        for _ in range(64):  # 64 x 64 KiB = 4 MiB each, unless closed first
            open_ = [s for s in open_ if send_all_or_closed(s, piece)]
        for sock in open_:  # whatever got through the socket buffers is answered and closed
            status, _, _ = read_json_error(sock)
            assert status == 431
    finally:
        for sock in socks:
            sock.close()


def test_two_thousand_headers_are_refused(port: Port) -> None:
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(2000))
    with port.connect() as sock:
        send_all_or_closed(sock, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
        status, _, body = read_json_error(sock)
    assert status == 431
    assert body["error"]["code"] == "request_headers_too_large"  # type: ignore[index]


def test_ordinary_requests_still_pass_with_a_large_body(port: Port) -> None:
    """The head limit counts the head only, even when the body arrives in the same read."""
    headers = {"Authorization": f"Bearer {port.cred.token}"}
    body = {"model": "gpt-fake", "messages": [{"role": "user", "content": "x" * 200_000}]}
    with httpx.Client(timeout=30) as client:
        assert client.get(f"{port.proxy.url}/v1/models", headers=headers).status_code == 200
        resp = client.post(f"{port.proxy.url}/v1/chat/completions", headers=headers, json=body)
    assert resp.status_code == 200


def test_unfinished_heads_are_closed_after_the_head_timeout(port: Port) -> None:
    """Slowloris: 100 connections each trickle a header line and never finish the head; and
    100 more connect and send nothing. The server closes every one of them."""
    trickling = [port.connect() for _ in range(100)]
    silent = [port.connect() for _ in range(100)]
    try:
        for sock in trickling:
            assert send_all_or_closed(sock, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
        open_ = list(trickling)
        deadline = time.monotonic() + 120
        line = 0
        while open_:
            assert time.monotonic() < deadline, f"{len(open_)} slow heads still open"
            line += 1
            open_ = [s for s in open_ if send_all_or_closed(s, b"X-Slow-%d: a\r\n" % line)]
            time.sleep(0.5)
        for sock in silent:
            sock.settimeout(120)
            assert closed_by_server(sock)
        # and the port still serves
        with httpx.Client(timeout=30) as client:
            headers = {"Authorization": f"Bearer {port.cred.token}"}
            assert client.get(f"{port.proxy.url}/v1/models", headers=headers).status_code == 200
    finally:
        for sock in trickling + silent:
            sock.close()


def test_a_partial_head_gets_a_408_envelope(port: Port) -> None:
    with port.connect() as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Half: ")
        status, headers, body = read_json_error(sock)
    assert status == 408
    assert headers["connection"] == "close"
    assert body["error"]["code"] == "request_timeout"  # type: ignore[index]


def test_keep_alive_between_requests_is_not_cut_by_the_head_timeout(port: Port) -> None:
    headers = {"Authorization": f"Bearer {port.cred.token}"}
    with httpx.Client(timeout=30) as client:
        assert client.get(f"{port.proxy.url}/v1/models", headers=headers).status_code == 200
        time.sleep(HEAD_TIMEOUT * 2)  # idle on keep-alive, longer than the head timeout
        assert client.get(f"{port.proxy.url}/v1/models", headers=headers).status_code == 200


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /v1/models HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nBad Header\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
    ],
)
def test_malformed_http_gets_the_json_envelope(port: Port, raw: bytes) -> None:
    with port.connect() as sock:
        sock.sendall(raw)
        status, headers, body = read_json_error(sock)
    assert status == 400
    assert headers["content-type"] == "application/json"
    error = body["error"]
    assert isinstance(error, dict) and error["code"] == "invalid_request"
    assert error["type"] == "invalid_request_error"
