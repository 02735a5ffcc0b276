"""``llm-proxy manage cache ...``: the HTTP response cache."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from admin.options import JsonOpt
from admin.output import emit
from admin.runner import run

app = typer.Typer(help="The HTTP response cache.", no_args_is_help=True)


@app.command("purge")
def purge(
    ctx: typer.Context,
    project_id: Annotated[
        str | None, typer.Option("--project-id", help="Only this project's entries.")
    ] = None,
    path_prefix: Annotated[
        str | None,
        typer.Option(
            "--path-prefix", help="Only entries whose path starts with this (/v1/models)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove cached responses: all of them, one project's, or those under a path prefix.

    With HTTP_CACHE_BACKEND=redis the entries every instance shares are removed at once (POST and
    Vary-keyed entries included). With the in-memory backend every running worker is told to purge
    its own cache, which it does within a second.
    """

    def render(result: Any, as_json: bool) -> None:
        if as_json:
            emit(result, as_json=True)
            return
        what = f"project {result['project_id']}" if result["project_id"] else "all projects"
        where = f" under {result['path_prefix']}" if result["path_prefix"] else ""
        if result["purged"] is None:
            typer.echo(f"every worker's in-memory cache was told to purge {what}{where}")
        else:
            typer.echo(f"purged {result['purged']} cached responses of {what}{where} (redis)")

    run(ctx, lambda m: m.purge_cache(project_id, path_prefix), as_json=as_json, render=render)
