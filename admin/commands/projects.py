"""``llm-proxy manage project ...`` (its commands are built from the declared operations)."""

from __future__ import annotations

import typer

from admin.declared import Shown, page_data, usage_table

app = typer.Typer(
    help="Create and manage projects (one upstream API key each).", no_args_is_help=True
)

COLUMNS = ("id", "name", "base_url", "is_active", "request_count", "created_at")
TOTALS = "id name is_active request_count cache_hit_count prompt_tokens completion_tokens"

SHOWN = {
    "project list": Shown(columns=COLUMNS, result=page_data),
    "project usage": Shown(render=usage_table("project", (*TOTALS.split(), "last_used_at"))),
}
