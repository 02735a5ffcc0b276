"""``llm-proxy manage events ...``: watch request events, the stream, and dead letters."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import sys
from datetime import datetime
from typing import Annotated, Any

import typer

from admin.declared import Shown, page_data
from admin.options import JsonOpt
from admin.output import emit
from admin.remote import chosen_target
from admin.runner import Manager, guarded, open_store, run
from shared.clock import utcnow
from shared.config import Settings
from shared.management import inputs
from shared.management import operations as ops
from shared.store import SqlStore

app = typer.Typer(help="Request events, the event stream and dead letters.", no_args_is_help=True)

EVENT_COLUMNS = ("ts", "event_id", "token_id", "method", "path", "status", "model", "cache")
LETTER_COLUMNS = ("id", "created_at", "reason", "entry_id", "deliveries", "error")

_FOLLOW = inspect.Parameter(
    "follow",
    inspect.Parameter.KEYWORD_ONLY,
    default=False,
    annotation=Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events (Ctrl-C stops).")
    ],
)


def _tail(ctx: typer.Context, first: inputs.TailEvents, as_json: bool, extra: Any) -> None:
    """The latest events, then (with --follow) new ones as they are written, one line each."""
    if not extra["follow"]:
        run(
            ctx,
            lambda m: m.call(ops.TAIL_EVENTS, first),
            as_json=as_json,
            columns=EVENT_COLUMNS,
            result=page_data,
        )
        return

    async def follow(m: Manager) -> None:
        rows = (await m.call(ops.TAIL_EVENTS, first))["data"]
        _print(rows, as_json)
        after = _cursor(rows) or (utcnow(), "")
        while True:
            await asyncio.sleep(1.0)
            page = dataclasses.replace(first, limit=1000, after=after[0], after_event_id=after[1])
            rows = (await m.call(ops.TAIL_EVENTS, page))["data"]
            _print(rows, as_json)
            after = _cursor(rows) or after

    try:
        run(ctx, follow, as_json=as_json, render=lambda result, js: None)
    except KeyboardInterrupt:  # Ctrl-C ends --follow; nothing more to say
        raise typer.Exit(0) from None


def _cursor(rows: list[dict[str, Any]]) -> tuple[datetime, str] | None:
    if not rows:
        return None
    return datetime.fromisoformat(rows[-1]["ts"]), rows[-1]["event_id"]


def _print(rows: list[dict[str, Any]], as_json: bool) -> None:
    for view in rows:
        if as_json:
            sys.stdout.write(json.dumps(view) + "\n")
        else:
            sys.stdout.write("  ".join(str(view[c]) for c in EVENT_COLUMNS) + "\n")
    sys.stdout.flush()


SHOWN = {
    "events tail": Shown(extra=(_FOLLOW,), perform=_tail),
    "events dead-letters": Shown(columns=LETTER_COLUMNS, result=page_data),
}


@app.command("replay-dead-letters")
def replay_dead_letters(
    ctx: typer.Context,
    ids: Annotated[
        list[int] | None, typer.Option("--id", help="Only these dead letters (repeatable).")
    ] = None,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Only this reason, e.g. max_deliveries.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100_000)] = 1000,
    as_json: JsonOpt = False,
) -> None:
    """Record dead letters again, straight into the database.

    Run it after fixing what made them fail. Each is marked replayed; an event already recorded
    is not counted twice. Entries still not storable are listed with their error and stay.
    With --api-url the deployment hands them back to its event stream instead, and its
    dispatchers record them (or dead-letter them again) with the checks they always apply."""
    if chosen_target(ctx) is not None:
        back = inputs.RequeueDeadLetters(ids=ids or None, reason=reason, limit=limit)
        run(ctx, lambda m: m.call(ops.REQUEUE_DEAD_LETTERS, back), as_json=as_json)
        return
    from dispatcher.deadletter import replay_dead_letters as replay  # the pipeline loads slowly

    async def body(settings: Settings) -> dict[str, Any]:
        store: SqlStore = await open_store(settings)
        try:
            report = await replay(store, ids=ids or [], reason=reason, limit=limit)
        finally:
            await store.close()
        return {
            "replayed": len(report.replayed),
            "inserted": report.inserted,
            "failed": {str(k): v for k, v in report.failed.items()},
        }

    result = guarded(body)
    emit(result, as_json=as_json)
    if result["failed"]:
        raise typer.Exit(1)
