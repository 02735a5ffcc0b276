"""The `llm-proxy` commands, driven for real against SQLite and Postgres, directly and through a
running management API (`--api-url`)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from admin.cli import app
from tests.manage_server import ManagementServer

UPSTREAM_KEY = "sk-upstream-TESTKEY-0123456789abcdef"
# Where remote-mode commands would find a database if they wrongly looked for one: nowhere.
NO_DATABASE = {"DB_DRIVER": "postgres", "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"}


@pytest.fixture(params=["local", "remote"])
def cli_env(request: pytest.FixtureRequest, db_env: dict[str, str]) -> dict[str, str]:
    """The environment of a `llm-proxy manage` command: the database itself, or a management API
    server over that database, with no usable database of the command's own."""
    if request.param == "local":
        return db_env
    server: ManagementServer = request.getfixturevalue("management_server")
    token: str = request.getfixturevalue("management_token")
    return {
        **NO_DATABASE,
        "ENCRYPTION_KEY": db_env["ENCRYPTION_KEY"],
        "LLM_PROXY_API_URL": server.url,
        "MANAGEMENT_TOKEN": token,
    }


def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env=env, input=stdin)


def ok_json(env: dict[str, str], *args: str, stdin: str | None = None) -> Any:
    result = cli(env, *args, "--json", stdin=stdin)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def fails(env: dict[str, str], *args: str, code: int = 1) -> str:
    """Run a command that must fail; return its one-line error."""
    result = cli(env, *args)
    assert result.exit_code == code, (result.stdout, result.stderr)
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    if code == 1:
        assert len(errors) == 1, result.stderr
        return errors[0]
    return result.stderr


def test_full_project_and_token_lifecycle(db_env: dict[str, str], cli_env: dict[str, str]) -> None:
    env = cli_env
    assert cli(db_env, "migrate").exit_code == 0
    proj = ok_json(
        env, "manage", "project", "create", "--name", "team-a", "--api-key", UPSTREAM_KEY
    )
    pid = proj["id"]
    assert proj["base_url"] == "https://api.openai.com/v1"
    assert [p["id"] for p in ok_json(env, "manage", "project", "list")] == [pid]

    gen = ok_json(
        env,
        "manage",
        "token",
        "generate",
        "--project-id",
        pid,
        "--duration",
        "24",
        "--max-requests",
        "1000",
        "--label",
        "ci",
    )
    assert gen["token"].startswith("sk-llmp-") and gen["id"]
    tid = gen["id"]

    shown = ok_json(env, "manage", "token", "show", tid)
    for key in ("request_count", "max_requests", "cache_hit_count", "expires_at", "is_active"):
        assert key in shown
    assert shown["max_requests"] == 1000 and shown["request_count"] == 0
    assert shown["is_active"] is True and shown["state"] == "active"
    assert "token" not in shown

    listed = ok_json(env, "manage", "token", "list", "--project-id", pid)
    assert [t["id"] for t in listed] == [tid]

    upd = ok_json(env, "manage", "token", "update", tid, "--max-requests", "5", "--duration", "7d")
    assert upd["max_requests"] == 5
    revoked = ok_json(env, "manage", "token", "revoke", tid)
    assert revoked["state"] == "revoked" and revoked["is_active"] is False
    again = ok_json(env, "manage", "token", "update", tid, "--activate")
    assert again["state"] == "active" and again["revoked_at"] is None

    ok_json(env, "manage", "token", "generate", "--project-id", pid)
    bulk = ok_json(env, "manage", "token", "revoke", "--project-id", pid)
    assert bulk["revoked"] == 2

    renamed = ok_json(
        env,
        "manage",
        "project",
        "update",
        pid,
        "--name",
        "team-b",
        "--base-url",
        "http://127.0.0.1:9/v1/",
    )
    assert renamed["name"] == "team-b" and renamed["base_url"] == "http://127.0.0.1:9/v1"
    off = ok_json(env, "manage", "project", "deactivate", pid, "--revoke-tokens")
    assert off["is_active"] is False
    assert ok_json(env, "manage", "project", "activate", pid)["is_active"] is True
    assert ok_json(env, "manage", "project", "delete", pid, "--yes")["deleted"] is True
    assert ok_json(env, "manage", "project", "list") == []

    actions = [a["action"] for a in ok_json(env, "manage", "audit", "list", "--limit", "100")]
    for action in (
        "project.create",
        "token.generate",
        "token.update",
        "token.revoke",
        "token.revoke_project",
        "project.update",
        "project.deactivate",
        "project.activate",
        "project.delete",
    ):
        assert action in actions


def test_api_key_from_stdin_and_env(cli_env: dict[str, str]) -> None:
    a = ok_json(
        cli_env,
        "manage",
        "project",
        "create",
        "--name",
        "a",
        "--api-key-stdin",
        stdin=UPSTREAM_KEY + "\n",
    )
    b = ok_json(
        {**cli_env, "UPSTREAM_API_KEY": UPSTREAM_KEY}, "manage", "project", "create", "--name", "b"
    )
    assert a["id"] != b["id"]


def test_bad_input_is_one_line_nonzero_and_writes_nothing(cli_env: dict[str, str]) -> None:
    env = cli_env
    pid = ok_json(env, "manage", "project", "create", "--name", "p", "--api-key", UPSTREAM_KEY)[
        "id"
    ]
    before_tokens = ok_json(env, "manage", "token", "list")

    assert "no project with id" in fails(
        env, "manage", "token", "generate", "--project-id", "00000000-0000-7000-8000-000000000000"
    )
    assert "no project with id" in fails(env, "manage", "token", "generate", "--project-id", "x")
    assert "invalid duration" in fails(
        env, "manage", "token", "generate", "--project-id", pid, "--duration", "soon"
    )
    assert "max requests must be a positive" in fails(
        env, "manage", "token", "generate", "--project-id", pid, "--max-requests", "0"
    )
    assert "already exists" in fails(
        env, "manage", "project", "create", "--name", "p", "--api-key", UPSTREAM_KEY
    )
    assert "API key is required" in fails(env, "manage", "project", "create", "--name", "q")
    assert "base URL must be" in fails(
        env, "manage", "project", "create", "--name", "q", "--api-key", "k", "--base-url", "ftp://x"
    )
    assert "no token with id" in fails(env, "manage", "token", "revoke", "nope")
    assert "no project with id" in fails(env, "manage", "project", "show", "nope")
    assert "nothing to update" in fails(env, "manage", "project", "update", pid)

    # usage errors exit 2
    fails(env, "manage", "token", "generate", code=2)
    fails(env, "manage", "token", "revoke", code=2)
    fails(env, "manage", "token", "generate", "--project-id", pid, "--max-requests", "ten", code=2)

    assert [p["name"] for p in ok_json(env, "manage", "project", "list")] == ["p"]
    assert ok_json(env, "manage", "token", "list") == before_tokens
    failures = ok_json(env, "manage", "audit", "list", "--outcome", "failure", "--limit", "100")
    assert len(failures) >= 8


def test_bad_setting_stops_with_one_line(db_env: dict[str, str]) -> None:
    line = fails({**db_env, "DATABASE_POOL_SIZE": "lots"}, "manage", "project", "list")
    assert line == "error: DATABASE_POOL_SIZE must be an integer >= 1, got 'lots'"


def test_postgres_without_migration_says_what_to_do(encryption_key: str) -> None:
    from tests.services import create_database, drop_database, require

    require("PostgreSQL", "127.0.0.1", 5432)
    url = create_database()
    try:
        env = {"DB_DRIVER": "postgres", "DATABASE_URL": url, "ENCRYPTION_KEY": encryption_key}
        assert "run `llm-proxy migrate`" in fails(env, "manage", "project", "list")
        env.pop("ENCRYPTION_KEY")
        assert "ENCRYPTION_KEY must be set" in fails(env, "manage", "project", "list")
    finally:
        drop_database(url)


def test_unreachable_postgres_is_one_line(encryption_key: str) -> None:
    env = {
        "DB_DRIVER": "postgres",
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x",
        "ENCRYPTION_KEY": encryption_key,
    }
    assert "database" in fails(env, "migrate").lower()


def test_key_rotation_re_encrypts_every_project(db_env: dict[str, str]) -> None:
    from shared.crypto import new_key

    ok_json(db_env, "manage", "project", "create", "--name", "r", "--api-key", UPSTREAM_KEY)
    new = new_key()
    rotated_env = {**db_env, "ENCRYPTION_KEY": new, "ENCRYPTION_OLD_KEYS": db_env["ENCRYPTION_KEY"]}
    assert ok_json(rotated_env, "manage", "keys", "rotate")["rotated"] == 1
    assert ok_json(rotated_env, "manage", "keys", "rotate")["rotated"] == 0
    # the old key is no longer needed
    new_only = {**db_env, "ENCRYPTION_KEY": new}
    assert ok_json(new_only, "manage", "keys", "rotate")["rotated"] == 0


def test_keys_new_prints_a_usable_key() -> None:
    out = ok_json({}, "manage", "keys", "new")
    from shared.crypto import Keyring

    Keyring.from_text(out["encryption_key"])


@pytest.mark.parametrize("argv", [["--help"], ["manage", "token", "generate", "--help"]])
def test_help_everywhere(argv: list[str]) -> None:
    assert cli({}, *argv).exit_code == 0


def test_console_script_is_installed() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "admin", "--help"], capture_output=True, text=True, check=True
    )
    assert "manage" in out.stdout
