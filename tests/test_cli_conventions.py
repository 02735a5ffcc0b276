"""CLI conventions, here and through the management API: names for ids, one duration grammar,
--yes for what cannot be undone, tables that fit, --version, token rotation."""

from __future__ import annotations

from datetime import datetime, timedelta

from tests.test_cli import UPSTREAM_KEY, cli, cli_env, fails, ok_json

__all__ = ["cli_env"]  # the local/remote fixture


def _project(env: dict[str, str], name: str) -> str:
    created = ok_json(env, "manage", "project", "create", "--name", name, "--api-key", UPSTREAM_KEY)
    return str(created["id"])


def test_a_name_or_label_stands_for_an_id(cli_env: dict[str, str]) -> None:
    env = cli_env
    pid = _project(env, "team-blue")
    assert ok_json(env, "manage", "project", "show", "team-blue")["id"] == pid
    token = ok_json(
        env, "manage", "token", "generate", "--project-id", "team-blue", "--label", "ci"
    )
    assert token["project_id"] == pid
    assert ok_json(env, "manage", "token", "show", "ci")["id"] == token["id"]
    assert [t["id"] for t in ok_json(env, "manage", "token", "list", "--project-id", "team-blue")]
    ok_json(env, "manage", "token", "generate", "--project-id", pid, "--label", "ci")
    assert "2 tokens are labelled 'ci': use the id" in fails(env, "manage", "token", "show", "ci")
    assert "no project with id or name" in fails(env, "manage", "project", "show", "team-red")
    # a name that is another project's id is ambiguous
    _project(env, pid)
    assert "one project's id and another's name" in fails(env, "manage", "project", "show", pid)


def test_one_duration_grammar(cli_env: dict[str, str]) -> None:
    env = cli_env
    pid = _project(env, "d")
    line = fails(env, "manage", "token", "generate", "--project-id", pid, "--duration", "0")
    assert "invalid duration '0'" in line and "never" in line
    assert (
        ok_json(env, "manage", "token", "generate", "--project-id", pid, "--duration", "never")[
            "expires_at"
        ]
        is None
    )
    week = ok_json(env, "manage", "token", "generate", "--project-id", pid, "--duration", "7d")
    expires = datetime.fromisoformat(week["expires_at"])
    assert (
        timedelta(days=6)
        < expires - datetime.fromisoformat(week["created_at"])
        <= timedelta(days=7, seconds=1)
    )
    recent = ok_json(env, "manage", "audit", "list", "--since", "1h")
    assert {a["action"] for a in recent} >= {"project.create", "token.generate"}
    assert ok_json(env, "manage", "audit", "list", "--since", "2999-01-01") == []
    assert "invalid time 'soon'" in fails(env, "manage", "audit", "list", "--since", "soon")


def test_what_cannot_be_undone_needs_yes_when_nobody_can_answer(cli_env: dict[str, str]) -> None:
    env = cli_env
    pid = _project(env, "keep")
    for extra in ((), ("--json",)):
        result = cli(env, "manage", "project", "delete", pid, *extra)
        assert result.exit_code == 2 and "repeat with --yes" in result.stderr, result.stderr
    assert ok_json(env, "manage", "project", "show", pid)["name"] == "keep"  # still there
    assert ok_json(env, "manage", "project", "delete", "keep", "--yes")["deleted"] is True


def test_tables_fit_the_terminal(cli_env: dict[str, str]) -> None:
    env = cli_env
    pid = _project(env, "wide")
    ok_json(env, "manage", "token", "generate", "--project-id", pid, "--label", "x" * 120)
    for width in ("80", "120"):
        narrow = {**env, "COLUMNS": width}
        for args in (("token", "list"), ("project", "list"), ("project", "show", pid)):
            result = cli(narrow, "manage", *args)
            assert result.exit_code == 0, result.stderr
            assert max(len(line) for line in result.stdout.splitlines()) <= int(width), args


def test_token_rotation(cli_env: dict[str, str]) -> None:
    env = cli_env
    pid = _project(env, "rot")
    old = ok_json(env, "manage", "token", "generate", "--project-id", pid, "--max-requests", "9")
    new = ok_json(env, "manage", "token", "rotate", old["id"], "--grace", "1h")
    assert new["replaces"] == old["id"] and new["token"].startswith("sk-llmp-")
    assert new["max_requests"] == 9 and new["expires_at"] == old["expires_at"]
    shown = ok_json(env, "manage", "token", "show", old["id"])
    grace_end = datetime.fromisoformat(shown["expires_at"])
    assert grace_end <= datetime.fromisoformat(new["created_at"]) + timedelta(hours=1, seconds=1)
    assert shown["state"] == "active"  # until the grace ends
    assert "invalid duration '0'" in fails(
        env, "manage", "token", "rotate", new["id"], "--grace", "0"
    )
    ok_json(env, "manage", "token", "revoke", new["id"])
    assert "is not active" in fails(env, "manage", "token", "rotate", new["id"])
    rotations = ok_json(env, "manage", "audit", "list", "--action", "token.rotate")
    assert [r["outcome"] for r in rotations] == ["failure", "failure", "success"]
    assert all(new["token"] not in str(r) for r in rotations)


def test_version() -> None:
    result = cli({}, "--version")
    assert result.exit_code == 0 and result.stdout.startswith("llm-proxy ")
