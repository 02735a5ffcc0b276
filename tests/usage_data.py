"""Request events written straight to a store, as the dispatcher would, for usage views to show."""

from __future__ import annotations

import asyncio
from typing import Any

from shared.clock import new_id
from shared.config import Settings
from shared.events import RequestEvent
from shared.store import make_store


def request_event(token: dict[str, Any], ts: float, **kw: object) -> RequestEvent:
    """An event of ``token`` (a token view: ``id`` and ``project_id``) at ``ts``."""
    fields: dict[str, object] = {
        "event_id": new_id(),
        "request_id": new_id(),
        "ts": ts,
        "project_id": token["project_id"],
        "token_id": token["id"],
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": 200,
    }
    fields.update(kw)
    return RequestEvent(**fields)  # type: ignore[arg-type]


def record(settings: Settings, events: list[RequestEvent]) -> None:
    """Insert ``events`` with their aggregates, through a store of the caller's own."""

    async def go() -> None:
        store = make_store(settings)
        await store.open()
        try:
            await store.record_events(events)
        finally:
            await store.close()

    asyncio.run(go())
