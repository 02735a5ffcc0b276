"""``llm-proxy manage project ...`` (its commands are built from the declared operations)."""

from __future__ import annotations

import typer

from admin.declared import Shown, detail, page_data, usage_table

app = typer.Typer(
    help="Create and manage projects (one upstream API key each).", no_args_is_help=True
)

#: ``manage project upstream ...``: a project's several upstreams
upstream_app = typer.Typer(
    help="A project's several upstreams: balanced by weight, failing over by priority "
    "(docs/providers.md).",
    no_args_is_help=True,
)
app.add_typer(upstream_app, name="upstream")
UPSTREAM_COLUMNS = ("id", "kind", "base_url", "weight", "priority", "enabled")

COLUMNS = ("id", "name", "kind", "base_url", "is_active", "request_count", "created_at")
TOTALS = "id name is_active request_count cache_hit_count prompt_tokens completion_tokens"

SHOWN = {
    "project list": Shown(columns=COLUMNS, result=page_data),
    "project show": Shown(render=detail("upstreams", "budgets")),
    "project upstream list": Shown(columns=UPSTREAM_COLUMNS, result=page_data),
    "project usage": Shown(render=usage_table("project", (*TOTALS.split(), "last_used_at"))),
}
