"""Running the real `llm-proxy server` (gunicorn + uvicorn workers) as a subprocess, and
provisioning projects and tokens for it through the management service."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from shared.config import Settings
from shared.crypto import load_keyring, new_key
from shared.management import Management
from shared.management.inputs import CreateProject, GenerateToken
from shared.store import make_store
from tests.services import free_port

#: Tests send many requests from one address; no request-rate limit gets in their way.
UNLIMITED = {"GLOBAL_RATE_LIMIT": "0", "IP_RATE_LIMIT": "0"}


def production_env(db_url: str, redis_addr: str, **extra: str) -> dict[str, str]:
    """Settings of the production path: Postgres, the Redis stream as the event bus (under a
    key of this test's own), a new encryption key, no request-rate limit; ``extra`` on top."""
    return {
        **UNLIMITED,
        "DB_DRIVER": "postgres",
        "DATABASE_URL": db_url,
        "ENCRYPTION_KEY": new_key(),
        "LLM_PROXY_EVENT_BUS": "redis-streams",
        "REDIS_ADDR": redis_addr,
        "REDIS_STREAM_KEY": f"events-{uuid.uuid4().hex[:8]}",
        **extra,
    }


BASE_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LOG_LEVEL": "info"}


def terminate(proc: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> int | None:
    """SIGTERM, wait, SIGKILL if it will not go; the exit code (None if never started)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@dataclass
class ProxyProcess:
    env: dict[str, str]
    cwd: Path
    workers: int = 2
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ProxyProcess:
        env = {
            **BASE_ENV,
            **self.env,
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "WORKERS": str(self.workers),
        }
        self.log_path = self.cwd / f"proxy-{self.port}.log"
        with open(self.log_path, "wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "admin", "server"],
                env=env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"proxy exited at start:\n{self.logs()}")
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"proxy not ready in {timeout}s:\n{self.logs()}")
            time.sleep(0.05)
        # every worker must be up, not just the first to answer
        time.sleep(0.3 if self.workers > 1 else 0)
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int | None:
        proc, self.proc = self.proc, None
        return terminate(proc, timeout)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""


@dataclass
class Provisioned:
    project_id: str
    token_id: str
    token: str


def provision(
    env: dict[str, str],
    cwd: Path,
    base_url: str,
    *,
    name: str = "p",
    api_key: str = "sk-upstream-KEY-abcdef123456",
    **token_kw: Any,
) -> Provisioned:
    """A project pointing at ``base_url`` and a token for it, made the way the CLI makes them."""

    async def go() -> Provisioned:
        here = os.getcwd()
        os.chdir(cwd)  # relative SQLite paths resolve where the server runs
        try:
            settings = Settings.from_env(env)
            store = make_store(settings)
            await store.open()
            try:
                await store.migrate()
                mgmt = Management(store=store, keyring=load_keyring(settings), actor="test")
                project = await mgmt.create_project(
                    CreateProject(name=name, base_url=base_url, api_key=api_key)
                )
                token = await mgmt.generate_token(
                    GenerateToken(project_id=project["id"], **token_kw)
                )
                return Provisioned(project["id"], token["id"], token["token"])
            finally:
                await store.close()
        finally:
            os.chdir(here)

    return asyncio.run(go())


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)


@dataclass
class DispatcherProcess:
    """A real `llm-proxy dispatcher` subprocess."""

    env: dict[str, str]
    cwd: Path
    name: str = "d1"
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def start(self) -> DispatcherProcess:
        self.log_path = self.cwd / f"dispatcher-{self.name}.log"
        env = {**BASE_ENV, "DISPATCHER_HTTP_ADDR": "off", **self.env}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "admin",
                    "dispatcher",
                    "--consumer-name",
                    self.name,
                    "--claim-idle",
                    "2s",
                ],
                env=env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def stop(self, timeout: float = 30.0) -> int | None:
        proc, self.proc = self.proc, None
        return terminate(proc, timeout)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""
