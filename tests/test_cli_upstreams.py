"""``manage project create --kind`` and ``manage project upstream add|list|update|remove``, on
the database and through the management API (the same declared operations): keys taken from
stdin, stored encrypted and never shown; ``show`` lists a project's upstreams; upstreams added
this way serve traffic, and ``token usage --json`` says which one served and in how many
attempts."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from tests import test_cli
from tests.provider_fakes import FailingUpstream
from tests.proxy_process import UNLIMITED, ProxyProcess
from tests.test_cli import cli, fails, ok_json

cli_env = test_cli.cli_env  # the same fixture: local and remote (through the management API)

KEY_ONE = "sk-upstream-ONE-0123456789"
KEY_TWO = "sk-upstream-TWO-0123456789"


def test_kinds_and_upstreams_lifecycle(db_env: dict[str, str], cli_env: dict[str, str]) -> None:
    env = cli_env
    assert cli(db_env, "migrate").exit_code == 0
    claude = ok_json(
        env, "manage", "project", "create", "--name", "claude", "--kind", "anthropic",
        "--base-url", "https://api.anthropic.com/v1", "--api-key", KEY_ONE,
    )  # fmt: skip
    assert claude["kind"] == "anthropic"
    plain = ok_json(env, "manage", "project", "create", "--name", "plain", "--api-key", KEY_ONE)
    assert plain["kind"] == "openai"
    pid = plain["id"]

    added = ok_json(
        env, "manage", "project", "upstream", "add", "--project-id", pid,
        "--base-url", "https://a.example/v1", "--api-key-stdin", "--weight", "3",
        stdin=KEY_ONE + "\n",
    )  # fmt: skip
    assert (added["weight"], added["priority"], added["kind"], added["enabled"]) == (
        3, 0, "openai", True,
    )  # fmt: skip
    second = ok_json(
        env, "manage", "project", "upstream", "add", "--project-id", "plain",
        "--base-url", "https://b.example/openai", "--api-key", KEY_TWO,
        "--kind", "azure-openai", "--priority", "1",
    )  # fmt: skip
    listed = ok_json(env, "manage", "project", "upstream", "list", "--project-id", pid)
    assert [u["id"] for u in listed] == [added["id"], second["id"]]
    shown = ok_json(env, "manage", "project", "show", pid)
    assert [u["base_url"] for u in shown["upstreams"]] == [
        "https://a.example/v1",
        "https://b.example/openai",
    ]
    for command in (["project", "show", pid], ["project", "upstream", "list", "--project-id", pid]):
        out = cli(env, "manage", *command, "--json").stdout
        assert KEY_ONE not in out and KEY_TWO not in out and "api_key" not in out

    updated = ok_json(
        env, "manage", "project", "upstream", "update", second["id"], "--weight", "0",
        "--disabled", "--api-key", KEY_ONE,
    )  # fmt: skip
    assert (updated["weight"], updated["enabled"]) == (0, False)
    assert "nothing to update" in fails(env, "manage", "project", "upstream", "update", added["id"])
    removed = ok_json(env, "manage", "project", "upstream", "remove", second["id"], "--yes")
    assert removed == {"id": second["id"], "removed": True}
    assert "no upstream" in fails(
        env, "manage", "project", "upstream", "remove", second["id"], "--yes"
    )
    listed = ok_json(env, "manage", "project", "upstream", "list", "--project-id", pid)
    assert [u["id"] for u in listed] == [added["id"]]


def test_an_unknown_kind_is_refused_in_one_line(db_env: dict[str, str]) -> None:
    assert cli(db_env, "migrate").exit_code == 0
    result = cli(
        db_env,
        "manage",
        "project",
        "create",
        "--name",
        "x",
        "--kind",
        "azure",
        "--api-key",
        KEY_ONE,
    )
    assert result.exit_code != 0
    assert "azure-openai" in result.stderr  # names the kinds there are
    assert ok_json(db_env, "manage", "project", "list") == []


def test_upstreams_added_by_the_cli_serve_and_usage_says_who(tmp_path: Path) -> None:
    (tmp_path / "proxy.db").touch()
    env = {**UNLIMITED, "DATABASE_URL": str(tmp_path / "proxy.db")}
    down = FailingUpstream(name="down", mode="500").start()
    up = FailingUpstream(name="up").start()
    here = os.getcwd()
    os.chdir(tmp_path)  # the generated ENCRYPTION_KEY file sits beside the database
    try:
        assert cli(env, "migrate").exit_code == 0
        pid = ok_json(env, "manage", "project", "create", "--name", "p", "--api-key", KEY_ONE)["id"]
        for url, priority in ((down.base_url, "0"), (up.base_url, "1")):
            ok_json(
                env, "manage", "project", "upstream", "add", "--project-id", pid,
                "--base-url", url, "--api-key", KEY_TWO, "--priority", priority,
            )  # fmt: skip
        token = ok_json(env, "manage", "token", "generate", "--project-id", pid)
        proxy = ProxyProcess(env=env, cwd=tmp_path, workers=1).start()
        try:
            response = httpx.post(
                proxy.url + "/v1/chat/completions",
                json={"model": "m", "messages": []},
                headers={"authorization": f"Bearer {token['token']}"},
                timeout=60,
            )
        finally:
            proxy.stop()  # the embedded bus writes what it holds on the way out
        assert response.status_code == 200 and response.json()["model"] == "up"
        usage = ok_json(env, "manage", "token", "usage", token["id"])
        upstream_ids = [
            u["id"]
            for u in ok_json(env, "manage", "project", "upstream", "list", "--project-id", pid)
        ]
        (event,) = usage["events"] if "events" in usage else usage["requests"]
        assert (event["upstream"], event["attempts"]) == (upstream_ids[1], 2)
    finally:
        os.chdir(here)
        down.stop()
        up.stop()
