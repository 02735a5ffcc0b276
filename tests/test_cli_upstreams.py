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


def test_azure_deployments_on_projects_and_upstreams(
    db_env: dict[str, str], cli_env: dict[str, str]
) -> None:
    env = cli_env
    assert cli(db_env, "migrate").exit_code == 0
    project = ok_json(
        env, "manage", "project", "create", "--name", "az", "--kind", "azure-openai",
        "--base-url", "https://az.example", "--api-key", KEY_ONE,
        "--deployment", "gpt-4o=prod-4o", "--deployment", "gpt-4o-mini=mini",
        "--api-version", "2025-01-01-preview",
    )  # fmt: skip
    assert project["deployments"] == {"gpt-4o": "prod-4o", "gpt-4o-mini": "mini"}
    assert project["api_version"] == "2025-01-01-preview"
    # given, the table is replaced whole; '' empties it, and the api-version
    changed = ok_json(env, "manage", "project", "update", "az", "--deployment", "o3=o3-east")
    assert (changed["deployments"], changed["api_version"]) == (
        {"o3": "o3-east"}, "2025-01-01-preview",
    )  # fmt: skip
    cleared = ok_json(
        env, "manage", "project", "update", "az", "--deployment", "", "--api-version", ""
    )
    assert (cleared["deployments"], cleared["api_version"]) == ({}, None)

    upstream = ok_json(
        env, "manage", "project", "upstream", "add", "--project-id", "az",
        "--base-url", "https://west.example", "--api-key", KEY_TWO, "--kind", "azure-openai",
        "--deployment", "gpt-4o=west-4o",
    )  # fmt: skip
    assert (upstream["deployments"], upstream["api_version"]) == ({"gpt-4o": "west-4o"}, None)
    updated = ok_json(
        env, "manage", "project", "upstream", "update", upstream["id"],
        "--api-version", "2024-10-21",
    )  # fmt: skip
    assert (updated["deployments"], updated["api_version"]) == (
        {"gpt-4o": "west-4o"}, "2024-10-21",
    )  # fmt: skip
    shown = ok_json(env, "manage", "project", "show", "az")
    assert shown["upstreams"][0]["deployments"] == {"gpt-4o": "west-4o"}

    update = ["manage", "project", "upstream", "update", upstream["id"]]
    assert "MODEL=DEPLOYMENT" in fails(env, *update, "--deployment", "gpt-4o")
    assert "deployment name" in fails(env, *update, "--deployment", "gpt-4o=a/b")
    assert "twice" in fails(env, *update, "--deployment", "m=a", "--deployment", "m=b")
    assert "api version" in fails(env, *update, "--api-version", "2024-10-21&x=1")
    # another kind would keep the table and never use it: refused
    plain = ok_json(
        env, "manage", "project", "upstream", "add", "--project-id", "az",
        "--base-url", "https://plain.example/v1", "--api-key", KEY_TWO,
    )  # fmt: skip
    for command in (
        ["project", "create", "--name", "p", "--api-key", KEY_ONE, "--deployment", "m=d"],
        ["project", "upstream", "update", plain["id"], "--api-version", "2024-10-21"],
        ["project", "update", "az", "--kind", "openai", "--deployment", "m=d"],
    ):
        assert "are for kind azure-openai (this one is openai)" in fails(env, "manage", *command)
    ok_json(env, "manage", "project", "upstream", "remove", plain["id"], "--yes")
    again = ok_json(env, "manage", "project", "upstream", "list", "--project-id", "az")
    assert (again[0]["deployments"], again[0]["api_version"]) == (
        {"gpt-4o": "west-4o"}, "2024-10-21",
    )  # fmt: skip


def test_an_upstream_is_addressed_by_id_and_guarded_by_its_project(
    db_env: dict[str, str], cli_env: dict[str, str]
) -> None:
    env = cli_env
    assert cli(db_env, "migrate").exit_code == 0
    for name in ("one", "two"):
        ok_json(env, "manage", "project", "create", "--name", name, "--api-key", KEY_ONE)
    mine = ok_json(
        env, "manage", "project", "upstream", "add", "--project-id", "one",
        "--base-url", "https://a.example/v1", "--api-key", KEY_ONE,
    )  # fmt: skip
    update = ["manage", "project", "upstream", "update", mine["id"], "--weight", "5"]
    remove = ["manage", "project", "upstream", "remove", mine["id"], "--yes"]
    # another project's id: refused, in one line, and nothing changes
    error = fails(env, *update, "--project-id", "two")
    assert "not one of project 'two'" in error
    assert "not one of project 'two'" in fails(env, *remove, "--project-id", "two")
    assert "no project" in fails(env, *remove, "--project-id", "three")
    listed = ok_json(env, "manage", "project", "upstream", "list", "--project-id", "one")
    assert [(u["id"], u["weight"]) for u in listed] == [(mine["id"], 1)]
    # its own project (by name or id), or the id alone
    assert ok_json(env, *update, "--project-id", "one")["weight"] == 5
    assert ok_json(env, *update[:-1], "6")["weight"] == 6
    assert ok_json(env, *remove, "--project-id", mine["project_id"])["removed"] is True
    assert ok_json(env, "manage", "project", "upstream", "list", "--project-id", "one") == []
