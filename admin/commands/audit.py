"""``llm-proxy manage audit ...``"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from admin.options import JsonOpt
from admin.output import emit, more_hint
from admin.runner import run
from shared.store import AuditFilter

app = typer.Typer(help="The audit log of management actions.", no_args_is_help=True)

COLUMNS = ("id", "ts", "actor", "action", "target_id", "outcome", "details")


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _print_page(page: dict[str, Any], as_json: bool) -> None:
    # --json stays a plain array (scripts page with the last entry's id as --before-id).
    emit(page["data"], as_json=as_json, columns=COLUMNS)
    if not as_json:
        more_hint("--before-id", page["next_before_id"])


@app.command("list")
def list_(
    ctx: typer.Context,
    action: Annotated[str | None, typer.Option("--action", help="e.g. token.revoke")] = None,
    target_id: Annotated[
        str | None, typer.Option("--target-id", help="A project/token id.")
    ] = None,
    outcome: Annotated[str | None, typer.Option("--outcome", help="success or failure")] = None,
    since: Annotated[
        datetime | None, typer.Option("--since", help="Entries at or after this ISO time (UTC).")
    ] = None,
    until: Annotated[
        datetime | None, typer.Option("--until", help="Entries before this ISO time (UTC).")
    ] = None,
    before_id: Annotated[
        int | None, typer.Option("--before-id", help="Page: entries older than this id.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Newest first, a page at a time."""
    flt = AuditFilter(
        action=action,
        target_id=target_id,
        outcome=outcome,
        since=_utc(since),
        until=_utc(until),
        before_id=before_id,
        limit=limit,
    )
    run(ctx, lambda m: m.audit_page(flt), as_json=as_json, render=_print_page)
