"""Noticing that the client left while its request is forwarded, so the upstream exchange stops
at once (its connection closed, the pool slot freed) and the upstream stops generating, and
billing, for nobody.

The proxy's own protocol (proxy/listener.py) tells the watch directly when the client's
connection is lost: no task and no ``receive`` per request. Under any other ASGI server a task
waits on ``receive`` for the disconnect instead, as the ASGI specification has it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.body import StreamedBody
from proxy.upstream import Response

# In a request's scope state: present when the server calls the watch itself; then it holds the
# request's watch while the request is forwarded.
HOOK_KEY = "llm_proxy.disconnect"


class DisconnectWatch:
    """What a disconnect must stop: the request task while it waits for the upstream's
    headers, then the response being relayed. Made as the request is about to be forwarded;
    ``stop`` before its last byte is sent."""

    __slots__ = ("body", "gone", "response", "state", "task", "watcher")

    def __init__(self, scope: dict[str, Any], receive: Any, body: object) -> None:
        self.gone = False
        self.body = body
        self.task: asyncio.Task[Any] | None = asyncio.current_task()
        self.response: Response | None = None
        state: dict[str, Any] | None = scope.get("state")
        self.watcher: asyncio.Task[None] | None = None
        if state is not None and HOOK_KEY in state:
            self.state: dict[str, Any] | None = state
            state[HOOK_KEY] = self
        else:
            self.state = None
            self.watcher = asyncio.create_task(_wait_for_disconnect(receive, self))

    def fire(self) -> None:
        """The client is gone: the upstream exchange is stopped. A large body still being sent
        upstream is waited for first (its next read may be the disconnect, which fails the
        request itself; or it was read whole, and then the exchange is stopped here)."""
        if self.gone:
            return
        body = self.body
        if isinstance(body, StreamedBody) and not body.finished.is_set():
            if self.watcher is None:
                self.watcher = asyncio.create_task(self._after_body(body))
            return
        self.gone = True
        if self.response is not None:
            self.response.close()
        elif self.task is not None:
            self.task.cancel()

    def stop(self) -> None:
        """From here a lost connection is not a disconnect to act on (the response is done)."""
        if self.state is not None:
            self.state[HOOK_KEY] = None
            self.state = None
        if self.watcher is not None:
            self.watcher.cancel()
            self.watcher = None

    async def _after_body(self, body: StreamedBody) -> None:
        await body.finished.wait()
        self.fire()


def lost(state: dict[str, Any]) -> None:
    """Called by the server when the connection of the request owning ``state`` is lost."""
    watch = state.get(HOOK_KEY)
    if watch is not None:
        watch.fire()


async def _wait_for_disconnect(receive: Any, watch: DisconnectWatch) -> None:
    body = watch.body
    if isinstance(body, StreamedBody):
        await body.finished.wait()  # until then the body's own reads see a disconnect
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            watch.fire()
            return
