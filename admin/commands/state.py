"""``llm-proxy apply`` and ``llm-proxy export``: the deployment's projects, their upstreams and
tokens as a file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from admin.options import ApiUrlOpt, JsonOpt, ManagementTokenOpt
from admin.output import emit, fail
from admin.plan import Change, current, make_plan, upstreams_of
from admin.remote import RemoteTarget
from admin.runner import Manager, perform
from admin.state import (
    NEVER,
    State,
    StateError,
    key_placeholder,
    parse,
    project_fields,
    render,
    token_fields,
    upstream_fields,
)


def _target(api_url: str | None, management_token: str | None) -> RemoteTarget | None:
    return RemoteTarget(api_url, management_token or "") if api_url else None


def _read(path: str) -> State:
    """The whole file, checked; any problem is one line naming its place, before any I/O."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
    try:
        return parse(text, path)
    except StateError as exc:
        fail(f"{path}: {exc.message}")
        raise  # unreachable: fail() exits


def _confirm(changes: list[Change], yes: bool) -> None:
    if yes or not any(c.destructive for c in changes):
        return
    if not sys.stdin.isatty():
        fail("--prune would revoke or deactivate and nobody can confirm it here: add --yes", 2)
    if not typer.confirm("Revoke and deactivate what the file no longer names?", default=False):
        fail("nothing changed")


def apply(
    file: Annotated[
        str, typer.Option("--file", "-f", help="The state file (YAML); - reads standard input.")
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the changes and make none of them.")
    ] = False,
    prune: Annotated[
        bool,
        typer.Option(
            "--prune",
            help="Also revoke the tokens of the file's projects it does not name, and deactivate "
            "(revoking their tokens) the projects it does not name.",
        ),
    ] = False,
    set_keys: Annotated[
        bool,
        typer.Option(
            "--set-keys",
            help="Also set existing projects' upstream keys from api_key_env / api_key_file "
            "(new projects always take theirs).",
        ),
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask before --prune's changes.")
    ] = False,
    as_json: JsonOpt = False,
    api_url: ApiUrlOpt = None,
    management_token: ManagementTokenOpt = None,
) -> None:
    """Make the deployment's projects and tokens what a state file says (docs/config-as-code.md).

    Prints the changes (+ create, ~ update, - revoke or deactivate), then makes them through the
    management operations, each one checked and audited; a second run prints "no changes".
    A token the file names that does not exist is created and its secret printed this once.
    """
    state = _read(file)

    async def action(manager: Manager) -> dict[str, Any]:
        try:
            changes = await make_plan(manager, state, prune=prune, set_keys=set_keys)
        except StateError as exc:  # what the file asks cannot be done here: nothing is changed
            raise StateError(f"{file}: {exc.message}") from None
        if not as_json:
            for change in changes:
                typer.echo(change.line())
        out: dict[str, Any] = {
            "changes": [c.document() for c in changes],
            "applied": False,
            "new_tokens": [],
        }
        if dry_run or not changes:
            return out
        _confirm(changes, yes)
        for change in changes:
            assert change.step is not None
            made = await change.step(manager)
            if change.new_token is not None:
                project, label = change.new_token
                new = {"project": project, "label": label, "id": made["id"], "token": made["token"]}
                out["new_tokens"].append(new)
                if not as_json:
                    typer.echo(f"token {project}/{label or '(no label)'}: {made['token']}")
        out["applied"] = True
        return out

    result = perform(_target(api_url, management_token), action)
    if as_json:
        emit(result, as_json=True)
        return
    count = len(result["changes"])
    if not count:
        typer.echo("no changes")
    elif not result["applied"]:
        typer.echo(f"dry run: {count} change(s), none made")
    else:
        typer.echo(f"applied {count} change(s)")
        if result["new_tokens"]:
            typer.echo("new tokens are shown this once: store them now", err=True)


def _exported(
    projects: list[dict[str, Any]],
    tokens: list[dict[str, Any]],
    upstreams: dict[str, list[dict[str, Any]]],
) -> list[Any]:
    out = []
    for project in projects:
        entry: dict[str, Any] = {"name": project["name"]}
        entry.update({f.name: project[f.name] for f in project_fields() if f.name in project})
        entry["active"] = project["is_active"]
        entry["api_key_env"] = key_placeholder(project["name"])
        entry["upstreams"] = _exported_upstreams(project["name"], upstreams[project["id"]])
        own = [t for t in tokens if t["project_id"] == project["id"]]
        labels = [t["label"] for t in own]
        entry["tokens"] = []
        for t in own:
            item: dict[str, Any] = {"label": t["label"]}
            if not t["label"] or labels.count(t["label"]) > 1:
                item["id"] = t["id"]  # a label that does not tell the token apart
            item.update({f.name: t[f.name] for f in token_fields()})
            item["active"] = t["is_active"]
            item["expires_at"] = t["expires_at"] or NEVER
            entry["tokens"].append(item)
        out.append(entry)
    return out


def _exported_upstreams(project: str, upstreams: list[dict[str, Any]]) -> list[Any]:
    urls = [u["base_url"] for u in upstreams]
    out = []
    for n, u in enumerate(upstreams, 1):
        item: dict[str, Any] = {"base_url": u["base_url"]}
        if urls.count(u["base_url"]) > 1:
            item["id"] = u["id"]  # a base URL that does not tell the upstream apart
        item.update({f.name: u[f.name] for f in upstream_fields() if f.name != "base_url"})
        item["api_key_env"] = key_placeholder(f"{project} upstream {n}")
        out.append(item)
    return out


def export(
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Write to this file, not stdout.")
    ] = None,
    api_url: ApiUrlOpt = None,
    management_token: ManagementTokenOpt = None,
) -> None:
    """Write the deployment's projects and tokens as a state file for `llm-proxy apply`.

    Secrets are never written: each project names the variable its upstream key is to be read
    from (PROJECT_API_KEY, a placeholder), and tokens appear by label with their limits.
    """

    async def action(manager: Manager) -> str:
        projects, tokens = await current(manager)
        upstreams = {p["id"]: await upstreams_of(manager, p["id"]) for p in projects}
        return render(_exported(projects, tokens, upstreams))

    text = perform(_target(api_url, management_token), action)
    if output is None:
        sys.stdout.write(text)
        return
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror}")
    typer.echo(f"wrote {output}", err=True)
