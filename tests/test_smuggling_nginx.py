"""Smuggling attempts through real nginx (compose/nginx.conf) → the proxy → a recording upstream
that parses with h11, and straight at the proxy's port: whatever nginx and the proxy accept or
refuse, the upstream sees one request per answer the client got, and never a request hidden
inside another's bytes."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy_wiring import COMPOSE_DIR, nginx_for_loopback, require_tool
from tests.proxy_process import UNLIMITED, Provisioned, ProxyProcess, provision, terminate
from tests.recording_upstream import RecordingUpstream
from tests.services import free_port, port_open

MARK = b"smuggled"


@dataclass
class Chain:
    nginx_port: int
    proxy: ProxyProcess
    creds: Provisioned
    upstream: RecordingUpstream
    root: Path

    def send(self, data: bytes, port: int | None = None) -> bytes:
        """Raw bytes to nginx (or ``port``) on one connection; all it answers until it closes."""
        with socket.create_connection(("127.0.0.1", port or self.nginx_port), timeout=30) as sock:
            sock.sendall(data)
            out = b""
            while chunk := sock.recv(65536):
                out += chunk
            return out


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    nginx = require_tool("nginx")
    root = tmp_path_factory.mktemp("smuggling-nginx")
    upstream = RecordingUpstream().start()
    env = {**UNLIMITED, "HTTP_CACHE_ENABLED": "false"}  # every request reaches the upstream
    creds = provision(env, root, upstream.base_url)
    proxy = ProxyProcess(env=env, cwd=root, workers=1).start()
    port = free_port()
    prefix = root / "nginx"
    prefix.mkdir()
    conf = nginx_for_loopback(
        (COMPOSE_DIR / "nginx.conf").read_text(), [f"127.0.0.1:{proxy.port}"], f"127.0.0.1:{port}"
    )
    (prefix / "nginx.conf").write_text(conf)
    with open(root / "nginx.log", "wb") as log:
        proc = subprocess.Popen(
            [
                nginx,
                "-p",
                f"{prefix}/",
                "-e",
                "stderr",
                "-c",
                str(prefix / "nginx.conf"),
                "-g",
                "daemon off;",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 15
    while not port_open("127.0.0.1", port):
        assert proc.poll() is None, (root / "nginx.log").read_text()
        assert time.monotonic() < deadline, "nginx did not start"
        time.sleep(0.05)
    yield Chain(port, proxy, creds, upstream, root)
    terminate(proc)  # type: ignore[arg-type]
    proxy.stop()
    upstream.stop()


def inner(token: str) -> bytes:
    """The request an attacker hides in a body: marked in its target and User-Agent (both are
    forwarded, so the upstream would show it)."""
    return (
        b"POST /v1/embeddings?smuggled=1 HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer %b\r\nUser-Agent: smuggled\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\n\r\n{}" % token.encode()
    )


def attacks(token: str) -> dict[str, bytes]:
    auth = b"Authorization: Bearer %b\r\n" % token.encode()
    start = b"POST /v1/embeddings HTTP/1.1\r\nHost: proxy\r\n" + auth
    hidden = inner(token)
    chunk = b"%x\r\n%b\r\n0\r\n\r\n" % (len(hidden), hidden)
    big = b'{"input":"' + b"a" * (2 << 20) + b'"}'
    return {
        "chunked-named-in-a-value": start
        + b"User-Agent: x transfer-encoding: chunked\r\nContent-Length: %d\r\n\r\n" % len(big)
        + big,
        "CL.TE": start + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n" + hidden,
        "TE.CL": start + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n" + chunk,
        "TE.TE-xchunked": start + b"Transfer-Encoding: xchunked\r\nContent-Length: 4\r\n\r\n"
        b"abcd" + hidden,
        "TE.TE-space-before-colon": start
        + b"Transfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\nabcd"
        + hidden,
        "TE.TE-two-headers": start
        + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n"
        + chunk,
        "TE.TE-tab": start
        + b"Transfer-Encoding:\tchunked\r\nContent-Length: 4\r\n\r\nabcd"
        + hidden,
        "TE.TE-list": start + b"Transfer-Encoding: gzip, chunked\r\n\r\n" + chunk,
        "duplicate-content-length": start
        + b"Content-Length: 4\r\nContent-Length: %d\r\n\r\nabcd" % (4 + len(hidden))
        + hidden,
        "content-length-list": start + b"Content-Length: 4, 4\r\n\r\nabcd" + hidden,
        "obs-fold": start
        + b"User-Agent: a\r\n transfer-encoding: chunked\r\nContent-Length: 4\r\n\r\nabcd"
        + hidden,
        "bare-lf": b"POST /v1/embeddings HTTP/1.1\nHost: proxy\n"
        + auth.replace(b"\r\n", b"\n")
        + b"Transfer-Encoding: chunked\nContent-Length: 4\n\n"
        + chunk,
        "nul-in-value": start + b"User-Agent: a\x00b\r\nContent-Length: 4\r\n\r\nabcd" + hidden,
        "oversize-chunk-size": start
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + b"f" * 20
        + b"4\r\nabcd\r\n0\r\n\r\n"
        + hidden,
        "chunk-size-overflow": start
        + b"Transfer-Encoding: chunked\r\n\r\n10000000000000004\r\nabcd\r\n0\r\n\r\n"
        + hidden,
        "bare-lf-length-only": b"POST /v1/embeddings HTTP/1.1\nHost: proxy\n"
        + auth.replace(b"\r\n", b"\n")
        + b"Content-Length: 4\n\nabcd"
        + hidden,
        "obs-fold-length-only": start
        + b"User-Agent: a\r\n b\r\nContent-Length: 4\r\n\r\nabcd"
        + hidden,
        "chunk-extension-lf": start
        + b"Transfer-Encoding: chunked\r\n\r\n4;x\nabcd\r\n0\r\n\r\n"
        + hidden,
    }


NAMES = list(attacks("t"))


def sentinel(token: str) -> bytes:
    """A plain last request that asks nginx to close: reading until then needs no timeout."""
    return (
        b"GET /v1/models?sentinel=1 HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer %b\r\n"
        b"Connection: close\r\n\r\n" % token.encode()
    )


@pytest.mark.parametrize("entry", ["nginx", "proxy-port"])
@pytest.mark.parametrize("name", NAMES)
def test_the_upstream_sees_exactly_the_requests_the_client_was_answered_for(
    chain: Chain, name: str, entry: str
) -> None:
    """Every answer the client got from the upstream (marked by X-Upstream-Request-ID) matches
    one request the upstream parsed, and the upstream parsed nothing else: no request rode
    inside another's bytes, whatever nginx made of the attack."""
    chain.upstream.reset()
    token = chain.creds.token
    port = chain.proxy.port if entry == "proxy-port" else None  # the proxy must hold alone too
    answer = chain.send(attacks(token)[name] + sentinel(token), port)
    assert answer.startswith(b"HTTP/1.1 "), answer
    relayed = answer.lower().count(b"\r\nx-upstream-request-id:")
    seen = chain.upstream.requests()
    assert chain.upstream.errors() == [], (name, chain.upstream.errors())
    assert len(seen) == relayed, (name, answer, seen)
    for request in seen:
        framing = request.header(b"content-length") + request.header(b"transfer-encoding")
        assert len(framing) <= 1, (name, request.headers)
    if relayed:  # the sentinel was reached: the connections stayed in step up to it
        assert seen[-1].target == b"/v1/models?sentinel=1", (name, seen)
    hidden = [r for r in seen if MARK in r.target]
    for request in hidden:  # a request nginx parsed as the client's own next one
        assert request.header(b"user-agent") == [b"smuggled"]


def test_plain_requests_go_through_the_chain(chain: Chain) -> None:
    chain.upstream.reset()
    body = b'{"model":"m","input":"after"}'
    request = (
        b"POST /v1/embeddings HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer %b\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
        % (chain.creds.token.encode(), len(body), body)
    )
    answer = chain.send(request * 3 + sentinel(chain.creds.token))
    assert answer.count(b"HTTP/1.1 200") == 4, answer
    assert [r.body for r in chain.upstream.requests()] == [body] * 3 + [b""]
