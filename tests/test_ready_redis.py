"""/ready after a Redis blip: the probe does not report the dead pooled connection it finds."""

from __future__ import annotations

from pathlib import Path

import httpx

from shared.crypto import new_key
from tests.proxy_process import UNLIMITED, ProxyProcess
from tests.services import RedisProcess
from tests.tcp_proxy import TcpProxy


def test_ready_is_200_at_once_when_the_pooled_connection_died_silently(
    tmp_path: Path, private_redis: RedisProcess
) -> None:
    """The network dropped the pooled connection without a reset (a failover behind a virtual
    IP, a NAT entry gone): Redis itself answers on a new connection, so the proxy is ready."""
    tcp = TcpProxy("127.0.0.1", private_redis.port).start()
    env = {
        **UNLIMITED,
        "ENCRYPTION_KEY": new_key(),
        "REDIS_ADDR": f"127.0.0.1:{tcp.port}",
        "REDIS_TIMEOUT": "500ms",
        "DISTRIBUTED_RATE_LIMIT_ENABLED": "true",
    }
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=1).start()
    try:
        for _ in range(2):
            assert httpx.get(f"{proxy.url}/ready", timeout=10).status_code == 200
            tcp.freeze()
            ready = httpx.get(f"{proxy.url}/ready", timeout=10)
            assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    finally:
        proxy.stop()
        tcp.stop()


def test_ready_is_200_at_once_when_a_restarted_redis_is_back(tmp_path: Path) -> None:
    server = RedisProcess(password="ready-pw").start()
    env = {
        **UNLIMITED,
        "ENCRYPTION_KEY": new_key(),
        "REDIS_ADDR": f"redis://:ready-pw@{server.addr}/1",
        "DISTRIBUTED_RATE_LIMIT_ENABLED": "true",
    }
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=1).start()
    try:
        for _ in range(2):
            assert httpx.get(f"{proxy.url}/ready", timeout=10).status_code == 200
            server.stop()
            down = httpx.get(f"{proxy.url}/ready", timeout=10)
            assert (down.status_code, down.json()["failed"]) == (503, ["redis"])
            server = RedisProcess(server.port, password="ready-pw").start()
            ready = httpx.get(f"{proxy.url}/ready", timeout=10)
            assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    finally:
        proxy.stop()
        server.stop()
