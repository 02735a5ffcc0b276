"""``llm-proxy manage events ...``: watch request events, the stream, and dead letters."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated, Any

import typer

from admin.options import JsonOpt
from admin.output import emit
from admin.runner import guarded, open_store
from shared.clock import from_epoch, utcnow
from shared.config import Settings
from shared.events import RequestEvent
from shared.store import SqlStore
from shared.store.models import DeadLetter

app = typer.Typer(help="Request events, the event stream and dead letters.", no_args_is_help=True)

EVENT_COLUMNS = ("ts", "event_id", "token_id", "method", "path", "status", "model", "cache")


def _event_view(event: RequestEvent) -> dict[str, Any]:
    return {
        "ts": from_epoch(event.ts).isoformat(timespec="milliseconds"),
        "event_id": event.event_id,
        "request_id": event.request_id,
        "project_id": event.project_id,
        "token_id": event.token_id,
        "method": event.method,
        "path": event.path,
        "status": event.status,
        "model": event.model,
        "cache": event.cache_status,
        "duration_ms": round(event.duration_ms, 3),
        "prompt_tokens": event.prompt_tokens,
        "completion_tokens": event.completion_tokens,
        "usage_source": event.usage_source,
        "error": event.error,
    }


def _letter_view(letter: DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.id,
        "created_at": letter.created_at,
        "reason": letter.reason,
        "entry_id": letter.entry_id,
        "event_id": letter.event_id,
        "deliveries": letter.deliveries,
        "error": letter.error,
        "replayed_at": letter.replayed_at,
        "payload": letter.payload.decode("utf-8", "backslashreplace"),
    }


async def _with_store(settings: Settings, body: Any) -> Any:
    store = await open_store(settings)
    try:
        return await body(store)
    finally:
        await store.close()


@app.command("tail")
def tail(
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 20,
    token_id: Annotated[str | None, typer.Option("--token-id", help="Only this token.")] = None,
    project_id: Annotated[
        str | None, typer.Option("--project-id", help="Only this project.")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events (Ctrl-C stops).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """The latest recorded request events, oldest first.

    With --follow, then new ones as they are written (one JSON object per line with --json)."""

    async def body(store: SqlStore) -> list[dict[str, Any]]:
        events = await store.list_events(limit=limit, token_id=token_id, project_id=project_id)
        if not follow:
            return [_event_view(e) for e in events]
        _print(events, as_json)
        last = (events[-1].ts, events[-1].event_id) if events else None
        after = (from_epoch(last[0]), last[1]) if last else (utcnow(), "")
        try:
            while True:
                await asyncio.sleep(1.0)
                new = await store.list_events(
                    limit=1000, token_id=token_id, project_id=project_id, after=after
                )
                _print(new, as_json)
                if new:
                    after = (from_epoch(new[-1].ts), new[-1].event_id)
        except asyncio.CancelledError:
            return []

    try:
        rows = guarded(lambda settings: _with_store(settings, body))
    except KeyboardInterrupt:  # Ctrl-C ends --follow; nothing more to say
        raise typer.Exit(0) from None
    if not follow:
        emit(rows, as_json=as_json, columns=EVENT_COLUMNS)


def _print(events: list[RequestEvent], as_json: bool) -> None:
    for event in events:
        view = _event_view(event)
        if as_json:
            sys.stdout.write(json.dumps(view) + "\n")
        else:
            sys.stdout.write("  ".join(str(view[c]) for c in EVENT_COLUMNS) + "\n")
    sys.stdout.flush()


@app.command("stats")
def stats(as_json: JsonOpt = False) -> None:
    """Counts of recorded events, dead letters and the stream's backlog.

    With LLM_PROXY_EVENT_BUS=redis-streams: the stream's length and, per consumer group,
    pending entries, lag and consumers."""

    async def body(settings: Settings) -> dict[str, Any]:
        async def from_db(store: SqlStore) -> dict[str, Any]:
            events = await store.event_stats()
            return {
                "events": int(events.get("events") or 0),
                "oldest_event": events.get("oldest_ts"),
                "newest_event": events.get("newest_ts"),
                "dead_letters": await store.dead_letter_counts(),
            }

        out: dict[str, Any] = await _with_store(settings, from_db)
        out["event_bus"] = settings.event_bus
        if settings.event_bus == "redis-streams":
            out["stream"] = await _stream_stats(settings)
        return out

    emit(guarded(body), as_json=as_json)


async def _stream_stats(settings: Settings) -> dict[str, Any]:
    # Imported here: the pipeline's modules (redis.asyncio, dramatiq) slow every CLI start.
    from dispatcher.maintenance import StreamKeeper
    from shared.redis import make_redis
    from shared.streams import shard_keys

    keys = shard_keys(settings.redis_stream_key, settings.redis_stream_shards)
    redis = make_redis(settings)
    try:
        every = [await StreamKeeper(redis, key).stats() for key in keys]
    finally:
        await redis.aclose()
    out = _one_stream(settings.redis_stream_key, every[0])
    if len(keys) > 1:  # REDIS_STREAM_SHARDS: shard 0 as before, then each shard and the total
        out["shards"] = [_one_stream(k, stats) for k, stats in zip(keys, every, strict=True)]
        out["total_length"] = sum(stats.length for stats in every)
    return out


def _one_stream(key: str, stats: Any) -> dict[str, Any]:
    return {
        "key": key,
        "length": stats.length,
        "groups": [
            {
                "name": g.name,
                "consumers": g.consumers,
                "pending": g.pending,
                "lag": g.lag,
                "last_delivered_id": g.last_delivered_id,
            }
            for g in stats.groups
        ],
    }


@app.command("dead-letters")
def dead_letters(
    reason: Annotated[
        str | None, typer.Option("--reason", help="undecodable, rejected or max_deliveries")
    ] = None,
    include_replayed: Annotated[
        bool, typer.Option("--include-replayed", help="Also those already replayed.")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Stream entries the dispatchers could not record, oldest first, with the error."""

    async def body(store: SqlStore) -> list[dict[str, Any]]:
        letters = await store.list_dead_letters(
            reason=reason, include_replayed=include_replayed, limit=limit
        )
        return [_letter_view(x) for x in letters]

    emit(
        guarded(lambda settings: _with_store(settings, body)),
        as_json=as_json,
        columns=("id", "created_at", "reason", "entry_id", "deliveries", "error"),
    )


@app.command("replay-dead-letters")
def replay_dead_letters(
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
    is not counted twice. Entries still not storable are listed with their error and stay."""
    from dispatcher.deadletter import replay_dead_letters as replay  # see _stream_stats

    async def body(store: SqlStore) -> dict[str, Any]:
        report = await replay(store, ids=ids or [], reason=reason, limit=limit)
        return {
            "replayed": len(report.replayed),
            "inserted": report.inserted,
            "failed": {str(k): v for k, v in report.failed.items()},
        }

    result = guarded(lambda settings: _with_store(settings, body))
    emit(result, as_json=as_json)
    if result["failed"]:
        raise typer.Exit(1)
