"""No token or upstream key ever shows in logs, audit rows, list/show output or errors."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from typer.testing import CliRunner

from admin.cli import app
from shared.config import Settings
from shared.store import make_store

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
