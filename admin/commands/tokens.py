"""``llm-proxy manage token ...`` (built from the declared operations, but for ``revoke``)."""

from __future__ import annotations

from typing import Annotated

import typer

from admin.declared import Shown, detail, page_data, usage_table
from admin.options import JsonOpt
from admin.output import fail
from admin.runner import run
from shared.management import inputs
from shared.management import operations as ops

app = typer.Typer(help="Generate, inspect, rotate and revoke proxy tokens.", no_args_is_help=True)

COLUMNS: tuple[str, ...] = ("id", "prefix", "project_id", "state", "request_count")
COLUMNS += ("max_requests", "cache_hit_count", "expires_at", "label")
TOTALS = (
    "id project_id state request_count max_requests remaining_requests cache_hit_count "
    "prompt_tokens completion_tokens last_used_at"
)

SHOWN = {
    "token list": Shown(columns=COLUMNS, result=page_data),
    "token show": Shown(render=detail("budgets")),
    "token usage": Shown(render=usage_table("token", TOTALS.split())),
}


@app.command("revoke")
def revoke(
    ctx: typer.Context,
    token_id: Annotated[str | None, typer.Argument(help="The token's id or label.")] = None,
    project_id: Annotated[
        str | None, typer.Option("--project-id", help="Revoke every token of this project.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke one token, or all of a project's tokens with --project-id."""
    if project_id is not None and token_id is None:
        bulk = inputs.ProjectRef(project_id=project_id)
        run(ctx, lambda m: m.call(ops.REVOKE_PROJECT_TOKENS, bulk), as_json=as_json)
    elif token_id is not None and project_id is None:
        one = inputs.TokenRef(token_id=token_id)
        run(ctx, lambda m: m.call(ops.REVOKE_TOKEN, one), as_json=as_json)
    else:
        fail("give a TOKEN_ID or --project-id (exactly one)", 2)
