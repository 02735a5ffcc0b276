"""`llm-proxy manage --api-url`: the same output as local mode, and one-line errors of its own."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime
from pathlib import Path

import pytest

from admin.remote import RemoteManagement
from shared.config import Settings
from shared.crypto import new_key
from shared.management import OPERATIONS, Management, fields_of
from tests.manage_server import ManagementServer
from tests.test_cli import NO_DATABASE, UPSTREAM_KEY, cli, fails, ok_json
from tests.usage_data import record, request_event


@pytest.fixture
def remote_env(management_server: ManagementServer, management_token: str) -> dict[str, str]:
    return {
        **NO_DATABASE,
        "LLM_PROXY_API_URL": management_server.url,
        "MANAGEMENT_TOKEN": management_token,
    }


def test_remote_and_local_print_the_same(
    db_env: dict[str, str], remote_env: dict[str, str]
) -> None:
    pid = ok_json(remote_env, "manage", "project", "create", "--name", "same", "--api-key", "k")[
        "id"
    ]
    token = ok_json(remote_env, "manage", "token", "generate", "--project-id", pid, "--label", "x")
    base = datetime(2025, 3, 1, tzinfo=UTC).timestamp()
    events = [request_event(token, base + i, model="gpt", prompt_tokens=2) for i in range(3)]
    record(Settings.from_env(db_env), events)
    commands = [
        ("manage", "project", "list"),
        ("manage", "project", "show", pid),
        ("manage", "project", "usage", pid),
        ("manage", "token", "list"),
        ("manage", "token", "list", "--project-id", pid),
        ("manage", "token", "show", token["id"]),
        ("manage", "token", "usage", token["id"], "--limit", "2"),
        ("manage", "audit", "list", "--limit", "2"),
        ("manage", "audit", "list", "--action", "token.generate"),
    ]
    for args in commands:
        for extra in ((), ("--json",)):
            here, there = cli(db_env, *args, *extra), cli(remote_env, *args, *extra)
            assert here.exit_code == there.exit_code == 0, (args, here.stderr, there.stderr)
            assert here.stdout == there.stdout, args
            assert here.stderr == there.stderr, args

    # paging hints go to stderr, so stdout stays the table
    usage = cli(remote_env, "manage", "token", "usage", token["id"], "--limit", "2")
    cursor = usage.stderr.split("--before-event-id ", 1)[1].split()[0]
    last = ok_json(remote_env, "manage", "token", "usage", token["id"], "--before-event-id", cursor)
    assert [e["event_id"] for e in last["events"]] == [events[0].event_id]
    assert last["token"]["prompt_tokens"] == 6 and last["next_before_event_id"] is None
    audit = cli(remote_env, "manage", "audit", "list", "--limit", "1")
    assert "more: repeat with --before-id" in audit.stderr

    actors = {a["actor"] for a in ok_json(db_env, "manage", "audit", "list")}
    assert actors == {"api:127.0.0.1"}


def test_flags_instead_of_variables(
    management_server: ManagementServer, management_token: str
) -> None:
    for url in (management_server.url, management_server.url + "/manage/"):
        result = cli(
            NO_DATABASE,
            "manage",
            "--api-url",
            url,
            "--management-token",
            management_token,
            "project",
            "list",
            "--json",
        )
        assert result.exit_code == 0, result.stderr
        assert result.stdout.strip() == "[]"


def test_remote_errors_are_one_line(
    management_server: ManagementServer,
    remote_env: dict[str, str],
    tmp_path: Path,
    encryption_key: str,
) -> None:
    wrong = {**remote_env, "MANAGEMENT_TOKEN": "not-it"}
    assert fails(wrong, "manage", "project", "list") == "error: Invalid management token."
    no_token = {k: v for k, v in remote_env.items() if k != "MANAGEMENT_TOKEN"}
    assert "needs the deployment's management token" in fails(no_token, "manage", "token", "list")
    down = {**remote_env, "LLM_PROXY_API_URL": "http://127.0.0.1:1"}
    assert "cannot reach the management API at http://127.0.0.1:1" in fails(
        down, "manage", "project", "list"
    )
    for bad in ("ftp://x", "proxy.example.com", "https://u:p@host"):
        line = fails({**remote_env, "LLM_PROXY_API_URL": bad}, "manage", "project", "list")
        assert "--api-url must" in line
    elsewhere = {**remote_env, "LLM_PROXY_API_URL": management_server.url + "/elsewhere"}
    assert "did not answer like an llm-proxy management API (HTTP 404)" in fails(
        elsewhere, "manage", "project", "list"
    )

    env = {"DATABASE_URL": str(tmp_path / "off.db"), "ENCRYPTION_KEY": encryption_key}
    with ManagementServer(Settings.from_env(env)) as disabled:
        off = {**remote_env, "LLM_PROXY_API_URL": disabled.url}
        line = fails(off, "manage", "project", "list")
    assert "management API is disabled" in line and "MANAGEMENT_TOKEN" in line


def test_keys_rotate_runs_on_the_server(db_env: dict[str, str], management_token: str) -> None:
    ok_json(db_env, "manage", "project", "create", "--name", "r", "--api-key", UPSTREAM_KEY)
    rotated = {
        **db_env,
        "ENCRYPTION_KEY": new_key(),
        "ENCRYPTION_OLD_KEYS": db_env["ENCRYPTION_KEY"],
        "MANAGEMENT_TOKEN": management_token,
    }
    with ManagementServer(Settings.from_env(rotated)) as server:
        env = {**NO_DATABASE, "LLM_PROXY_API_URL": server.url, "MANAGEMENT_TOKEN": management_token}
        assert ok_json(env, "manage", "keys", "rotate")["rotated"] == 1
        assert ok_json(env, "manage", "keys", "rotate")["rotated"] == 0
    # only the new key is needed now
    new_only = {**db_env, "ENCRYPTION_KEY": rotated["ENCRYPTION_KEY"]}
    assert ok_json(new_only, "manage", "keys", "rotate")["rotated"] == 0
    # `keys new` talks to nothing: it works whatever the remote settings say
    assert ok_json(
        {**NO_DATABASE, "LLM_PROXY_API_URL": "http://127.0.0.1:1"}, "manage", "keys", "new"
    )


def test_every_operation_runs_either_way() -> None:
    """Each declared operation names a service method taking exactly its input class; the
    remote client has one generic ``call`` for all of them, with the service's signature."""
    for op in OPERATIONS:
        method = getattr(Management, op.name)
        (param,) = list(inspect.signature(method).parameters.values())[1:]
        assert param.annotation in (op.inputs, op.inputs.__name__, f"i.{op.inputs.__name__}")
        assert fields_of(op.inputs) is not None
    assert inspect.signature(RemoteManagement.call) == inspect.signature(Management.call)
