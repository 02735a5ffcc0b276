"""``llm-proxy manage project ...``"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from admin.options import BeforeEventOpt, EventPageOpt, JsonOpt, ProjectIdArg
from admin.output import emit_usage, fail
from admin.runner import run
from shared.manage import DEFAULT_BASE_URL

app = typer.Typer(
    help="Create and manage projects (one upstream API key each).", no_args_is_help=True
)

COLUMNS = ("id", "name", "base_url", "is_active", "request_count", "created_at")

ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="UPSTREAM_API_KEY",
        show_envvar=True,
        help="The upstream API key. Prefer --api-key-stdin or UPSTREAM_API_KEY: a flag lands in "
        "shell history.",
    ),
]
ApiKeyStdinOpt = Annotated[
    bool, typer.Option("--api-key-stdin", help="Read the upstream API key from standard input.")
]


def _read_key(api_key: str | None, from_stdin: bool) -> str | None:
    if from_stdin:
        if api_key is not None and api_key != "":
            fail("give the API key once: --api-key or --api-key-stdin, not both", 2)
        return sys.stdin.readline().strip()
    return api_key


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help="Unique project name.")],
    base_url: Annotated[
        str, typer.Option("--base-url", help="Upstream base URL, as an OpenAI SDK's base_url.")
    ] = DEFAULT_BASE_URL,
    api_key: ApiKeyOpt = None,
    api_key_stdin: ApiKeyStdinOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a project; prints its id."""
    key = _read_key(api_key, api_key_stdin)
    run(ctx, lambda m: m.create_project(name, base_url, key), as_json=as_json)


@app.command("list")
def list_(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List projects."""
    run(ctx, lambda m: m.list_projects(), as_json=as_json, columns=COLUMNS)


@app.command("show")
def show(ctx: typer.Context, project_id: ProjectIdArg, as_json: JsonOpt = False) -> None:
    """Show one project with its usage totals."""
    run(ctx, lambda m: m.show_project(project_id), as_json=as_json)


USAGE_FIELDS = (
    "id",
    "name",
    "is_active",
    "request_count",
    "cache_hit_count",
    "prompt_tokens",
    "completion_tokens",
    "last_used_at",
)


@app.command("usage")
def usage(
    ctx: typer.Context,
    project_id: ProjectIdArg,
    limit: EventPageOpt = 20,
    before_event_id: BeforeEventOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A project's usage totals and its latest requests, newest first."""
    run(
        ctx,
        lambda m: m.project_usage(project_id, before_event_id=before_event_id, limit=limit),
        as_json=as_json,
        render=lambda result, js: emit_usage(result, js, "project", USAGE_FIELDS),
    )


@app.command("update")
def update(
    ctx: typer.Context,
    project_id: ProjectIdArg,
    name: Annotated[str | None, typer.Option("--name", help="New name.")] = None,
    base_url: Annotated[str | None, typer.Option("--base-url", help="New base URL.")] = None,
    api_key: Annotated[
        str | None, typer.Option("--api-key", help="New upstream API key (or --api-key-stdin).")
    ] = None,
    api_key_stdin: ApiKeyStdinOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Change a project's name, base URL or upstream key."""
    key = _read_key(api_key, api_key_stdin)
    run(
        ctx,
        lambda m: m.update_project(project_id, name=name, base_url=base_url, api_key=key),
        as_json=as_json,
    )


@app.command("delete")
def delete(
    ctx: typer.Context,
    project_id: ProjectIdArg,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete a project and its tokens (request history is kept)."""
    if not yes and not as_json and sys.stdin.isatty():
        typer.confirm(f"Delete project {project_id} and all its tokens?", abort=True)
    run(ctx, lambda m: m.delete_project(project_id), as_json=as_json)


@app.command("activate")
def activate(ctx: typer.Context, project_id: ProjectIdArg, as_json: JsonOpt = False) -> None:
    """Let a project's tokens be used again."""
    run(ctx, lambda m: m.set_project_active(project_id, True), as_json=as_json)


@app.command("deactivate")
def deactivate(
    ctx: typer.Context,
    project_id: ProjectIdArg,
    revoke_tokens: Annotated[
        bool, typer.Option("--revoke-tokens", help="Also revoke every token of the project.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Stop all traffic of a project at once."""
    run(
        ctx,
        lambda m: m.set_project_active(project_id, False, revoke_tokens=revoke_tokens),
        as_json=as_json,
    )
