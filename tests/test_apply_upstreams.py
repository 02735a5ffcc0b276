"""`llm-proxy apply` and `export` with a project's upstreams and Azure deployment tables, on the
database and through the management API: created, changed, pruned, round-tripped; keys never
written; a file that names an upstream ambiguously changes nothing."""

from __future__ import annotations

from pathlib import Path

from tests.test_cli import UPSTREAM_KEY, cli, cli_env, ok_json

__all__ = ["cli_env"]  # the local/remote fixture

STATE = """\
projects:
  - name: az
    kind: azure-openai
    base_url: https://east.example
    api_key_env: EAST_KEY
    deployments: {gpt-4o: prod-4o}
    api_version: "2025-01-01-preview"
    upstreams:
      - base_url: https://west.example/
        kind: azure-openai
        api_key_env: WEST_KEY
        priority: 1
        deployments: {gpt-4o: west-4o, gpt-4o-mini: west-mini}
      - base_url: https://spare.example
        api_key_env: WEST_KEY
        enabled: false
"""
WEST_KEY = "sk-west-0123456789abcdef"


def _apply(env: dict[str, str], path: Path, *args: str) -> tuple[int, str]:
    keys = {"EAST_KEY": UPSTREAM_KEY, "WEST_KEY": WEST_KEY}
    result = cli({**env, **keys}, "apply", "-f", str(path), *args)
    return result.exit_code, result.stdout + result.stderr


def _upstreams(env: dict[str, str]) -> dict[str, tuple[object, ...]]:
    listed = ok_json(env, "manage", "project", "upstream", "list", "--project-id", "az")
    return {
        u["base_url"]: (u["kind"], u["priority"], u["enabled"], u["deployments"], u["api_version"])
        for u in listed
    }


def test_upstreams_and_deployments_as_code(cli_env: dict[str, str], tmp_path: Path) -> None:
    env = cli_env
    path = tmp_path / "state.yaml"
    path.write_text(STATE)
    code, out = _apply(env, path)
    assert code == 0, out
    assert "+ create upstream az/https://west.example" in out
    project = ok_json(env, "manage", "project", "show", "az")
    assert (project["deployments"], project["api_version"]) == (
        {"gpt-4o": "prod-4o"}, "2025-01-01-preview",
    )  # fmt: skip
    assert _upstreams(env) == {
        "https://spare.example": ("openai", 0, False, {}, None),
        "https://west.example": (
            "azure-openai", 1, True, {"gpt-4o": "west-4o", "gpt-4o-mini": "west-mini"}, None,
        ),
    }  # fmt: skip
    assert _apply(env, path) == (0, "no changes\n")

    # export writes what apply reads, without a key; applied back, nothing changes
    exported = tmp_path / "exported.yaml"
    assert cli(env, "export", "-o", str(exported)).exit_code == 0
    text = exported.read_text()
    assert WEST_KEY not in text and UPSTREAM_KEY not in text
    assert "api_key_env: AZ_UPSTREAM_1_API_KEY" in text
    for extra in (["--dry-run", "--prune"], ["--prune", "--yes"]):
        result = cli(env, "apply", "-f", str(exported), *extra)
        assert (result.exit_code, result.stdout.strip()) == (0, "no changes"), result.stderr

    # a changed table, a removed api-version, and --prune for the upstream no longer named
    path.write_text(
        STATE.replace("west-4o,", "west-4o-v2,")
        .replace('"2025-01-01-preview"', "''")
        .split("      - base_url: https://spare.example")[0]
    )
    code, out = _apply(env, path, "--dry-run", "--prune")
    assert code == 0, out
    assert "~ update upstream az/https://west.example: deployments" in out
    assert "api_version '2025-01-01-preview' -> ''" in out
    assert "- remove upstream az/https://spare.example" in out
    assert len(_upstreams(env)) == 2  # a dry run changes nothing
    code, out = _apply(env, path, "--prune", "--yes")
    assert code == 0, out
    assert _upstreams(env) == {
        "https://west.example": (
            "azure-openai", 1, True, {"gpt-4o": "west-4o-v2", "gpt-4o-mini": "west-mini"}, None,
        ),
    }  # fmt: skip
    assert ok_json(env, "manage", "project", "show", "az")["api_version"] is None
    assert _apply(env, path, "--prune", "--yes") == (0, "no changes\n")


def test_an_ambiguous_or_bad_upstream_changes_nothing(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    env = cli_env
    ok_json(env, "manage", "project", "create", "--name", "az", "--api-key", UPSTREAM_KEY)
    for _ in range(2):  # two keys at one base URL: told apart only by id
        ok_json(
            env, "manage", "project", "upstream", "add", "--project-id", "az",
            "--base-url", "https://same.example", "--api-key", WEST_KEY,
        )  # fmt: skip
    path = tmp_path / "state.yaml"
    head = "projects:\n  - name: az\n    upstreams:\n"
    cases = {
        "      - base_url: https://same.example\n        weight: 2\n": (
            "projects[0].upstreams[0]: 2 upstreams of project az are at 'https://same.example'"
        ),
        "      - base_url: https://same.example\n        id: nope\n": (
            "projects[0].upstreams[0].id: no upstream of project az has this id"
        ),
        "      - base_url: https://new.example\n": (
            "projects[0].upstreams[0]: a new upstream needs api_key_env or api_key_file"
        ),
        "      - base_url: https://new.example\n        deployments: {m: 'a b'}\n": (
            "projects[0].upstreams[0].deployments: deployments: m: a deployment name"
        ),
        "      - kind: openai\n": "projects[0].upstreams[0].base_url: required",
    }
    for body, message in cases.items():
        path.write_text(head + body)
        code, out = _apply(env, path)
        assert code == 1 and message in out, out
    listed = ok_json(env, "manage", "project", "upstream", "list", "--project-id", "az")
    assert [u["weight"] for u in listed] == [1, 1]


def test_null_in_a_file_removes_a_value(cli_env: dict[str, str], tmp_path: Path) -> None:
    env = cli_env
    path = tmp_path / "state.yaml"
    path.write_text(STATE)
    assert _apply(env, path)[0] == 0
    path.write_text(
        "projects:\n  - name: az\n    models: null\n    deployments: null\n"
        "    api_version: null\n    upstreams:\n      - base_url: https://west.example\n"
        "        deployments: null\n      - base_url: https://spare.example\n"
    )
    code, out = _apply(env, path)
    assert code == 0, out
    project = ok_json(env, "manage", "project", "show", "az")
    assert (project["models"], project["deployments"], project["api_version"]) == (None, {}, None)
    assert _upstreams(env)["https://west.example"][3] == {}
    assert _apply(env, path) == (0, "no changes\n")
    path.write_text("projects:\n  - name: az\n    budget_window: null\n")
    ok_json(env, "manage", "project", "update", "az", "--budget-window", "1d")
    code, out = _apply(env, path)
    assert code == 1 and "budget_window: apply cannot unset it; give a value" in out, out
