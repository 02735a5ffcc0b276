"""``llm-proxy manage cache ...``: the HTTP response cache."""

from __future__ import annotations

from typing import Any

import typer

from admin.declared import Shown
from admin.output import emit

app = typer.Typer(help="The HTTP response cache.", no_args_is_help=True)


def _render(result: Any, as_json: bool) -> None:
    if as_json:
        emit(result, as_json=True)
        return
    what = f"project {result['project_id']}" if result["project_id"] else "all projects"
    where = f" under {result['path_prefix']}" if result["path_prefix"] else ""
    if result["purged"] is None:
        typer.echo(f"every worker's in-memory cache was told to purge {what}{where}")
    else:
        typer.echo(f"purged {result['purged']} cached responses of {what}{where} (redis)")


SHOWN = {"cache purge": Shown(render=_render)}
