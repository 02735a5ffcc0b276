"""Reaching the loopback services tests use, and owning throwaway databases on them."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from typing import NoReturn

import psycopg
import pytest

from tests.tls_files import TlsFiles

PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_HOST, REDIS_PORT = "127.0.0.1", int(os.environ.get("TEST_REDIS_PORT", "6379"))


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require(service: str, host: str, port: int) -> None:
    """Skip when a service is missing locally; fail in CI, where it must be there."""
    if port_open(host, port):
        return
    unavailable(f"{service} is not running on {host}:{port}")


def unavailable(message: str) -> NoReturn:
    """Skip the test locally; fail it in CI, where every service and tool must be there."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: services are required)")
    pytest.skip(message)


def pg_url_for(dbname: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{dbname}"


def create_database() -> str:
    """A new empty database on the shared server; returns its URL."""
    name = f"llmproxy_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return pg_url_for(name)


def drop_database(url: str) -> None:
    name = url.rpartition("/")[2]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    """A private redis-server on a free port, for tests that stop, pause or flood Redis."""

    def __init__(
        self,
        port: int | None = None,
        *,
        data_dir: str | None = None,
        password: str = "",
        tls: TlsFiles | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        """With ``data_dir``, Redis keeps an append-only file there (fsync on every write), as
        production Redis for the event stream must: a restart then loses nothing. ``password``
        sets ``requirepass``; with ``tls`` the port speaks only TLS; ``extra`` is passed as is
        (``--user`` lines, for example)."""
        self.port = port or free_port()
        self.data_dir = data_dir
        self.password = password
        self.tls = tls
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RedisProcess:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always", "--dir", self.data_dir]
            if self.data_dir
            else ["--appendonly", "no"]
        )
        auth = ["--requirepass", self.password] if self.password else []
        listen = ["--port", str(self.port)]
        if self.tls is not None:
            listen = [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                self.tls.cert,
                "--tls-key-file",
                self.tls.key,
                "--tls-ca-cert-file",
                self.tls.ca,
                "--tls-auth-clients",
                "no",
            ]
        self.proc = subprocess.Popen(
            [
                "redis-server",
                *listen,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--protected-mode",
                "no",
                *persistence,
                *auth,
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"redis-server did not start on {self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None
