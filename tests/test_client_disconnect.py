"""A client that leaves while the proxy waits for the upstream's headers: the upstream
connection is closed at once (so a slow completion stops for nobody and its pool slot is
freed) and the request's event says client_disconnected."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from shared.config import Settings
from shared.store import make_store
from tests.proxy_process import UNLIMITED, Provisioned, ProxyProcess, provision, run_async
from tests.recording_upstream import RecordingUpstream


@dataclass
class Setup:
    proxy: ProxyProcess
    creds: Provisioned
    upstream: RecordingUpstream
    env: dict[str, str]
    cwd: Path


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    upstream = RecordingUpstream().start()
    upstream.hold = threading.Event()  # the upstream "generates" until released
    env = {**UNLIMITED, "HTTP_CACHE_ENABLED": "false", "POOL_MAX_CONNECTIONS": "1"}
    creds = provision(env, tmp_path, upstream.base_url)
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=1).start()
    yield Setup(proxy, creds, upstream, env, tmp_path)
    upstream.hold.set()
    proxy.stop()
    upstream.stop()


def wait_until(condition: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


async def errors_of(env: dict[str, str], cwd: Path, token_id: str) -> list[tuple[str, int]]:
    here = os.getcwd()
    os.chdir(cwd)
    try:
        store = make_store(Settings.from_env(env))
        await store.open()
        try:
            async with store.transaction(readonly=True) as tx:
                rows = await tx.fetchall(
                    "SELECT error, status FROM request_events WHERE token_id = %s "
                    "AND phase = 'final'",
                    (token_id,),
                )
        finally:
            await store.close()
    finally:
        os.chdir(here)
    return [(r["error"], r["status"]) for r in rows]


# 256 KiB is read whole but is past uvicorn's read buffer, so reading was paused for it: the
# disconnect must be seen all the same
@pytest.mark.parametrize(
    "size", [30, 256 << 10, 3 << 20], ids=["small-body", "large-whole-body", "streamed-body"]
)
def test_leaving_before_the_headers_closes_the_upstream_connection(setup: Setup, size: int) -> None:
    body = b'{"model":"m","input":"' + b"a" * size + b'"}'
    request = (
        b"POST /v1/embeddings HTTP/1.1\r\nhost: proxy\r\nauthorization: Bearer %b\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
        % (setup.creds.token.encode(), len(body), body)
    )
    sock = socket.create_connection(("127.0.0.1", setup.proxy.port), timeout=30)
    sock.sendall(request)
    wait_until(lambda: setup.upstream.requests(), "the upstream never got the request")
    sock.close()  # the client gives up before any answer
    [conn] = setup.upstream.connections
    wait_until(lambda: conn.closed, "the proxy kept the upstream connection open")
    wait_until(
        lambda: run_async(errors_of(setup.env, setup.cwd, setup.creds.token_id)),
        "no event recorded",
    )
    assert run_async(errors_of(setup.env, setup.cwd, setup.creds.token_id)) == [
        ("client_disconnected", 499)
    ]
    # the pool's only slot is free again: the next request is served
    setup.upstream.hold.set()  # type: ignore[union-attr]
    resp = httpx.post(
        f"{setup.proxy.url}/v1/embeddings",
        headers={"Authorization": f"Bearer {setup.creds.token}"},
        json={"model": "m", "input": "again"},
        timeout=30,
    )
    assert resp.status_code == 200


def test_an_over_cap_chunked_upload_never_reaches_the_upstream_whole(tmp_path: Path) -> None:
    """The first 2 MiB stream upstream before the cap is crossed; the upstream must see an
    unfinished request on a connection that is then closed, never a complete one."""
    upstream = RecordingUpstream().start()
    env = {**UNLIMITED, "HTTP_CACHE_ENABLED": "false", "MAX_REQUEST_BODY_BYTES": "2097152"}
    creds = provision(env, tmp_path, upstream.base_url)
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=1).start()
    try:
        parts = [b"z" * 262144 for _ in range(16)]  # 4 MiB, no Content-Length
        resp = httpx.post(
            f"{proxy.url}/v1/files",
            headers={"Authorization": f"Bearer {creds.token}"},
            content=iter(parts),
            timeout=30,
        )
        assert resp.status_code == 413
        assert resp.json()["error"]["code"] == "request_too_large"
        # the proxy opens its upstream connection before the cap is crossed, but the upstream
        # may not have accepted it yet when the 413 arrives: wait for it to appear, then close
        wait_until(
            lambda: upstream.connections and all(c.closed for c in upstream.connections),
            "no upstream connection, or one left open",
        )
        assert upstream.requests() == []
        assert len(upstream.connections) == 1 and len(upstream.connections[0].raw) > 1 << 20
    finally:
        proxy.stop()
        upstream.stop()
