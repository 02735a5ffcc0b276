"""``llm-proxy manage audit ...``"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from admin.options import JsonOpt
from admin.runner import run
from shared.store import AuditFilter

app = typer.Typer(help="The audit log of management actions.", no_args_is_help=True)


@app.command("list")
def list_(
    action: Annotated[str | None, typer.Option("--action", help="e.g. token.revoke")] = None,
    target_id: Annotated[
        str | None, typer.Option("--target-id", help="A project/token id.")
    ] = None,
    outcome: Annotated[str | None, typer.Option("--outcome", help="success or failure")] = None,
    since: Annotated[datetime | None, typer.Option("--since", help="ISO time (UTC).")] = None,
    before_id: Annotated[
        int | None, typer.Option("--before-id", help="Page: entries older than this id.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Newest first."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    flt = AuditFilter(
        action=action,
        target_id=target_id,
        outcome=outcome,
        since=since,
        before_id=before_id,
        limit=limit,
    )
    run(
        lambda m: m.list_audit(flt),
        as_json=as_json,
        columns=("id", "ts", "actor", "action", "target_id", "outcome", "details"),
    )
