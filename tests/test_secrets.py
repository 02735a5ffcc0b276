"""No token, upstream key or management token ever shows in logs, audit rows, output or errors."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Callable, Iterator

import httpx
import pytest
from typer.testing import CliRunner

from admin.cli import app
from shared.config import Settings
from shared.logging import JsonFormatter, RedactingFilter
from shared.store import make_store
from tests.manage_client import Api
from tests.manage_server import ManagementServer

UPSTREAM_KEY = "sk-upstream-NEVERSHOWME-0123456789"


def test_secrets_stay_secret(db_env: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    runner = CliRunner()
    outputs: list[str] = []

    def run(*args: str) -> str:
        result = runner.invoke(app, list(args), env=db_env)
        outputs.append(result.stdout + result.stderr)
        return result.stdout

    pid = json.loads(
        run("manage", "project", "create", "--name", "s", "--api-key", UPSTREAM_KEY, "--json")
    )["id"]
    gen = json.loads(run("manage", "token", "generate", "--project-id", pid, "--json"))
    token, tid = gen["token"], gen["id"]
    outputs.pop()  # generation prints the token once, by design

    run("manage", "token", "generate", "--project-id", pid)
    outputs.pop()
    for args in (
        ("manage", "project", "list"),
        ("manage", "project", "list", "--json"),
        ("manage", "project", "show", pid),
        ("manage", "project", "show", pid, "--json"),
        ("manage", "token", "list"),
        ("manage", "token", "list", "--json"),
        ("manage", "token", "show", tid),
        ("manage", "token", "show", tid, "--json"),
        ("manage", "audit", "list", "--json"),
        ("manage", "token", "revoke", tid),
        ("manage", "project", "update", pid, "--api-key", UPSTREAM_KEY + "x"),
        ("manage", "project", "create", "--name", "s", "--api-key", UPSTREAM_KEY),
        ("manage", "token", "show", token),  # a token pasted where an id belongs
        ("manage", "token", "revoke", token),
        ("manage", "token", "list", "--project-id", token),
        ("manage", "token", "generate", "--project-id", token),
    ):
        run(*args)

    everything = "\n".join(outputs) + caplog.text
    assert token not in everything
    assert token[len("sk-llmp-") :] not in everything
    assert UPSTREAM_KEY not in everything

    # at rest: the token only as a hash, the key only encrypted
    blob = asyncio.run(dump_tables(Settings.from_env(db_env)))
    assert token not in blob and token[len("sk-llmp-") :] not in blob
    assert UPSTREAM_KEY not in blob
    assert "NEVERSHOWME" not in blob


def test_driver_errors_do_not_leak_connection_passwords(encryption_key: str) -> None:
    env = {
        "DB_DRIVER": "postgres",
        "ENCRYPTION_KEY": encryption_key,
        "DATABASE_URL": "postgresql://postgres:TOPSECRETPW@127.0.0.1:1/x",
    }
    result = CliRunner().invoke(app, ["manage", "project", "list"], env=env)
    assert result.exit_code == 1
    assert "TOPSECRETPW" not in result.stdout + result.stderr


async def dump_tables(settings: Settings) -> str:
    store = make_store(settings)
    await store.open()
    dump = []
    try:
        async with store.transaction(readonly=True) as tx:
            for table in ("projects", "tokens", "audit_events"):
                rows = await tx.fetchall(f"SELECT * FROM {table}")
                dump += [json.dumps(r, default=str) for r in rows]
    finally:
        await store.close()
    return "\n".join(dump)


@pytest.fixture
def our_log_output() -> Iterator[Callable[[], str]]:
    """What an operator reads: every record at DEBUG through the filter and formatter that
    `setup_logging` installs (a handler of the test's own, which the CLI's set-up leaves alone)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    yield stream.getvalue
    root.removeHandler(handler)
    root.setLevel(level)


def test_management_api_keeps_secrets(
    db_env: dict[str, str],
    management_server: ManagementServer,
    management_token: str,
    our_log_output: Callable[[], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []
    api = Api(management_server.url, management_token)

    def call(method: str, path: str, **kw: object) -> httpx.Response:
        reply = api.client.request(method, path, **kw)  # type: ignore[arg-type]
        seen.append(reply.text + str(reply.headers))
        return reply

    pid = call("POST", "/projects", json={"name": "s", "api_key": UPSTREAM_KEY}).json()["id"]
    token = api.client.post("/tokens", json={"project_id": pid}).json()["token"]  # shown once
    tid = call("GET", "/tokens").json()["data"][0]["id"]

    remote = {"LLM_PROXY_API_URL": management_server.url, "MANAGEMENT_TOKEN": management_token}
    for args in (
        ("manage", "token", "list"),
        ("manage", "token", "show", token),
        ("manage", "token", "revoke", token),
        ("manage", "audit", "list", "--json"),
    ):
        result = CliRunner().invoke(app, list(args), env=remote)
        seen.append(result.stdout + result.stderr)

    logging.getLogger().setLevel(logging.DEBUG)  # the CLI runs above turned it down
    caplog.set_level(logging.DEBUG)
    for method, path, kw in (
        ("GET", "/projects", {}),
        ("GET", f"/projects/{pid}", {}),
        ("GET", f"/tokens/{tid}", {}),
        ("GET", f"/tokens/{tid}/usage", {}),
        ("GET", "/audit", {}),
        ("PATCH", f"/projects/{pid}", {"json": {"api_key": UPSTREAM_KEY + "x"}}),
        ("POST", "/projects", {"json": {"name": "s", "api_key": UPSTREAM_KEY}}),
        ("POST", "/projects", {"json": {"name": "t", "api_key": UPSTREAM_KEY, "x": token}}),
        ("GET", f"/tokens/{token}", {}),  # a token pasted where an id belongs
        ("POST", f"/tokens/{token}/revoke", {}),
        ("GET", "/tokens", {"params": {"project_id": token}}),
        ("POST", "/tokens", {"json": {"project_id": token}}),
        ("GET", "/audit", {"params": {"target_id": token}}),
        ("GET", "/projects", {"headers": {"Authorization": f"Bearer {token}"}}),
        ("GET", "/projects", {"headers": {"Authorization": f"Bearer {management_token}x"}}),
        ("GET", "/projects", {"headers": {"Authorization": f"Basic {management_token}"}}),
    ):
        call(method, path, **kw)
    api.close()

    logged = our_log_output()
    assert "management API: invalid token" in logged  # rejections are logged...
    assert f"/manage/tokens/{token[:12]}" in logged  # ...and so are requests (access log)
    ours = "\n".join(
        r.getMessage() + str(r.__dict__) for r in caplog.records if r.name.startswith("llm_proxy")
    )
    everything = "\n".join(seen) + logged + ours
    for secret in (token, token[len("sk-llmp-") :], UPSTREAM_KEY, management_token):
        assert secret not in everything  # ...but never what was presented
    blob = asyncio.run(dump_tables(Settings.from_env(db_env)))
    for secret in (token, token[len("sk-llmp-") :], UPSTREAM_KEY, "NEVERSHOWME", management_token):
        assert secret not in blob
