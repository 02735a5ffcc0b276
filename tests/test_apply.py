"""`llm-proxy apply` and `llm-proxy export`, on SQLite and Postgres, on the database and through
the management API: the diff, idempotence, pruning, the audit trail, bad files and secrets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.manage_client import Api
from tests.manage_server import ManagementServer
from tests.test_cli import UPSTREAM_KEY, cli, cli_env, fails, ok_json

__all__ = ["cli_env"]  # the local/remote fixture

STATE = """\
projects:
  - name: team-a
    base_url: https://upstream.example/v1/
    api_key_env: TEAM_A_KEY
    tokens:
      - label: ci
        max_requests: 100
        rpm: 60
        expires_at: "2031-01-01T00:00:00Z"
      - label: batch
        max_concurrency: 2
        active: false
        expires_at: never
"""


def _env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "TEAM_A_KEY": UPSTREAM_KEY}


def _file(tmp_path: Path, text: str, name: str = "state.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _apply(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = cli(_env(env), "apply", *args)
    return result.exit_code, result.stdout, result.stderr


def _audit_actions(env: dict[str, str]) -> list[tuple[str, str]]:
    page = ok_json(env, "manage", "audit", "list", "--limit", "1000")
    rows = page["data"] if isinstance(page, dict) else page
    return [(row["action"], row["outcome"]) for row in rows]


def test_apply_creates_then_changes_nothing(cli_env: dict[str, str], tmp_path: Path) -> None:
    path = _file(tmp_path, STATE)
    code, out, _ = _apply(cli_env, "-f", path, "--dry-run")
    assert code == 0
    assert "+ create project team-a" in out and "+ create token team-a/ci" in out
    assert "dry run: 3 change(s), none made" in out
    assert ok_json(cli_env, "manage", "project", "list") == []

    result = cli(_env(cli_env), "apply", "-f", path, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["applied"] is True and len(doc["changes"]) == 3
    secrets = {t["label"]: t["token"] for t in doc["new_tokens"]}
    assert set(secrets) == {"ci", "batch"} and all(
        s.startswith("sk-llmp-") for s in secrets.values()
    )

    [project] = ok_json(cli_env, "manage", "project", "list")
    assert project["base_url"] == "https://upstream.example/v1"  # normalised as the CLI does
    tokens = {t["label"]: t for t in ok_json(cli_env, "manage", "token", "list")}
    assert tokens["ci"]["max_requests"] == 100 and tokens["ci"]["rpm"] == 60
    assert tokens["ci"]["expires_at"] == "2031-01-01T00:00:00Z"
    assert tokens["batch"]["is_active"] is False and tokens["batch"]["expires_at"] is None
    assert tokens["batch"]["max_concurrency"] == 2
    assert ("project.create", "success") in _audit_actions(cli_env)

    # the second run: nothing to do, no secret shown again, nothing audited
    before = _audit_actions(cli_env)
    code, out, err = _apply(cli_env, "-f", path)
    assert (code, out.strip()) == (0, "no changes")
    assert not any(s in out + err for s in secrets.values())
    assert _audit_actions(cli_env) == before


def test_update_and_prune_are_in_the_diff_and_the_audit_log(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    assert _apply(cli_env, "-f", _file(tmp_path, STATE))[0] == 0
    ok_json(cli_env, "manage", "project", "create", "--name", "legacy", "--api-key", UPSTREAM_KEY)
    ok_json(cli_env, "manage", "token", "generate", "--project-id", "legacy", "--label", "old")

    changed = STATE.replace("rpm: 60", "rpm: 120").replace(
        "      - label: batch\n        max_concurrency: 2\n        active: false\n"
        "        expires_at: never\n",
        "",
    )
    path = _file(tmp_path, changed, "changed.yaml")
    code, out, _ = _apply(cli_env, "-f", path)
    assert code == 0
    assert out.splitlines()[0] == "~ update token team-a/ci: rpm 60 -> 120"
    assert "revoke" not in out  # without --prune what the file leaves out stays
    assert ok_json(cli_env, "manage", "token", "show", "ci")["rpm"] == 120
    assert ("token.update", "success") in _audit_actions(cli_env)

    code, out, _ = _apply(cli_env, "-f", path, "--prune", "--dry-run")
    assert code == 0
    assert "- revoke token team-a/batch" in out.splitlines()
    assert "- deactivate project legacy: tokens_revoked 1 -> 0" in out.splitlines()

    result = cli(_env(cli_env), "apply", "-f", path, "--prune")  # nobody can confirm: refused
    assert result.exit_code == 2 and "--yes" in result.stderr
    assert ok_json(cli_env, "manage", "project", "show", "legacy")["is_active"] is True

    code, out, _ = _apply(cli_env, "-f", path, "--prune", "--yes")
    assert code == 0 and "applied 2 change(s)" in out
    assert ok_json(cli_env, "manage", "project", "show", "legacy")["is_active"] is False
    states = {t["label"]: t["state"] for t in ok_json(cli_env, "manage", "token", "list")}
    assert states == {"ci": "active", "batch": "revoked", "old": "revoked"}
    actions = _audit_actions(cli_env)
    assert ("token.revoke", "success") in actions
    assert ("project.deactivate", "success") in actions
    assert _apply(cli_env, "-f", path, "--prune")[1].strip() == "no changes"


def test_export_round_trips_with_an_empty_diff(cli_env: dict[str, str], tmp_path: Path) -> None:
    env = cli_env
    ok_json(env, "manage", "project", "create", "--name", "alpha beta", "--api-key", UPSTREAM_KEY)
    ok_json(
        env, "manage", "token", "generate", "--project-id", "alpha beta", "--label", "x",
        "--max-requests", "7", "--rpm", "0", "--max-concurrency", "3", "--duration", "30m",
    )  # fmt: skip
    twin = ok_json(env, "manage", "token", "generate", "--project-id", "alpha beta", "--label", "x")
    ok_json(env, "manage", "token", "update", twin["id"], "--deactivate")
    ok_json(env, "manage", "token", "generate", "--project-id", "alpha beta", "--duration", "never")
    ok_json(env, "manage", "project", "create", "--name", "off", "--api-key", UPSTREAM_KEY)
    ok_json(env, "manage", "project", "deactivate", "off")

    out = tmp_path / "exported.yaml"
    result = cli(env, "export", "-o", str(out))
    assert result.exit_code == 0, result.stderr
    text = out.read_text()
    assert UPSTREAM_KEY not in text and "sk-llmp-" not in text
    assert "api_key_env: ALPHA_BETA_API_KEY" in text and text.startswith("# llm-proxy state")
    assert text.count("id: ") == 3  # the two tokens labelled "x" and the unlabelled one

    for extra in (["--dry-run"], ["--dry-run", "--prune"], ["--prune", "--yes"]):
        result = cli(env, "apply", "-f", str(out), *extra)  # no key variable needed: none is new
        assert (result.exit_code, result.stdout.strip()) == (0, "no changes"), result.stderr
    assert cli(env, "export").stdout == text


def test_a_bad_file_names_its_place_and_changes_nothing(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    good = "  - name: first\n    api_key_env: TEAM_A_KEY\n"
    cases = {
        "projects:\n" + good + "  - name: second\n    api_key_env: TEAM_A_KEY\n    tokens:\n"
        "      - label: ci\n        rpm: -1\n": "projects[1].tokens[0].rpm: rpm must be 0",
        "projects:\n" + good + "  - name: x\n    base_url: ftp://nope\n    api_key_env: K\n": (
            "projects[1].base_url: base URL must be an http(s) URL"
        ),
        "projects:\n" + good + "  - name: x\n    colour: red\n": "projects[1].colour: unknown key",
        "projects:\n" + good + "  - name: x\n    tokens: [{label: a, rpm: 8796093022209}]\n": (
            "projects[1].tokens[0].rpm: rpm must be 0 (no per-token rate limit) or a positive "
            "integer up to 2147483647"
        ),
        "projects:\n" + good + good: "projects[1].name: a second project named 'first'",
        "projects:\n" + good + "  - name: y\n    api_key_env: NOT_SET_ANYWHERE\n": (
            "projects[1].api_key_env: NOT_SET_ANYWHERE is not set"
        ),
        "projects:\n" + good + "  - name: z\n": "projects[1]: a new project needs api_key_env",
        "projects: [\n": "not valid YAML at line 2",
    }
    for n, (text, message) in enumerate(cases.items()):
        path = _file(tmp_path, text, f"bad{n}.yaml")
        error = fails(_env(cli_env), "apply", "-f", path)
        assert error.startswith(f"error: {path}: ") and message in error, (text, error)
    assert ok_json(cli_env, "manage", "project", "list") == []
    assert _audit_actions(cli_env) == []
    error = fails(cli_env, "apply", "-f", str(tmp_path / "missing.yaml"))
    assert "cannot read" in error


def test_secrets_are_never_printed_but_a_new_token_once(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    path = _file(tmp_path, STATE)
    code, out, err = _apply(cli_env, "-f", path)
    assert code == 0 and UPSTREAM_KEY not in out + err
    secrets = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("token ")]
    assert len(secrets) == 2 and all(s.startswith("sk-llmp-") for s in secrets)
    assert all(out.count(s) == 1 for s in secrets)
    audit = json.dumps(ok_json(cli_env, "manage", "audit", "list"))
    assert UPSTREAM_KEY not in audit and not any(s in audit for s in secrets)

    # --set-keys changes an existing project's key from its reference, shown only by name
    env = {**_env(cli_env), "TEAM_A_KEY": "sk-upstream-NEWKEY-0123456789"}
    result = cli(env, "apply", "-f", path, "--set-keys")
    assert result.exit_code == 0, result.stderr
    assert "~ update project team-a: api_key none -> '$TEAM_A_KEY'" in result.stdout
    assert "NEWKEY" not in result.stdout + result.stderr


def test_apply_has_its_own_json_and_help(cli_env: dict[str, str], tmp_path: Path) -> None:
    path = _file(tmp_path, STATE)
    doc: Any = json.loads(cli(_env(cli_env), "apply", "-f", path, "--dry-run", "--json").stdout)
    assert doc["applied"] is False and doc["new_tokens"] == []
    assert doc["changes"][0] == {
        "action": "create",
        "target": "project team-a",
        "fields": {"base_url": {"from": None, "to": "https://upstream.example/v1"}},
    }
    assert cli(cli_env, "apply", "--help").exit_code == 0


def test_the_api_sets_an_exact_expiry(
    management_server: ManagementServer, management_token: str
) -> None:
    api = Api(management_server.url, management_token)
    try:
        project = api.request(
            "POST", "/projects", json={"name": "p", "api_key": UPSTREAM_KEY}
        ).json()
        body = {"project_id": "p", "expires_at": "2031-05-06T07:08:09.123456Z", "duration": "1h"}
        made = api.request("POST", "/tokens", json=body)
        assert (
            made.status_code == 201 and made.json()["expires_at"] == "2031-05-06T07:08:09.123456Z"
        )
        both = {"expires_at": "2032-01-01T00:00:00Z", "duration": "7d"}
        refused = api.request("PATCH", f"/tokens/{made.json()['id']}", json=both)
        assert refused.status_code == 400
        assert refused.json()["error"]["message"] == "give duration or expires_at, not both"
        moved = api.request(
            "PATCH", f"/tokens/{made.json()['id']}", json={"expires_at": "2032-01-01"}
        )
        assert moved.json()["expires_at"] == "2032-01-01T00:00:00Z"
        assert project["id"] == made.json()["project_id"]
    finally:
        api.client.close()
