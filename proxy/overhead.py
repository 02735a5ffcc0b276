"""The proxy's own time for a request: when it arrived, and the two figures built from that.

Arrival: the listener (proxy/listener.py) reads the clock once per socket read, before the
bytes are parsed, and puts the moment of the read that began a request in that request's
``scope["state"]`` (the per-request copy of the lifespan state uvicorn builds anyway). So the
figures include the server's share in front of the app: HTTP parsing, building the scope, and
the event loop's turn before the app runs. Served by something else (a test client, another
server), a request has no stamp, and its arrival is the app's first moment.

- ``proxy;dur`` (Server-Timing): arrival → the answer's head handed to the server, less the
  upstream wait for that head. A header cannot include what happens after it is written.
- ``llm_proxy_overhead_seconds``: the same, continued past the answer's last byte handed to the
  socket to the end of the request's recording (the server's writing of the head and body,
  relaying each chunk, then metrics, the event and a budget's settle, which the worker does
  before it reads the next request), less every upstream wait (the head's, and each read of a
  relayed body) and any time writing was paused because the client was not reading (flow
  control). See docs/operations.md "Server-Timing".
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from proxy.headers import server_timing

if TYPE_CHECKING:
    from proxy.exchange import Exchange

#: The keys in ``scope["state"]``: the arrival, a ``time.perf_counter()`` moment; and the
#: seconds writing the answer was paused by flow control (absent if it never was).
KEY = "llm_proxy.arrival"
PAUSED_KEY = "llm_proxy.write_paused"


def arrival(scope: dict[str, Any]) -> tuple[float, float]:
    """The request's first bytes' arrival: on ``time.perf_counter()``'s clock, and as epoch
    seconds (for the event and the trace), the same moment on both."""
    now = time.perf_counter()
    wall = time.time()
    state = scope.get("state")
    at: float | None = state.get(KEY) if state is not None else None
    if at is None:
        return now, wall
    return at, wall - (now - at)


def head_timing(ex: Exchange, upstream_ms: float) -> bytes:
    """Server-Timing for an answer whose head is about to be handed to the server; the
    moment is kept, for the histogram to continue from."""
    ex.head_at = now = time.perf_counter()
    ex.proxy_ms = proxy_ms = max((now - ex.started) * 1000 - upstream_ms, 0.0)
    return server_timing(proxy_ms, upstream_ms)


def overhead_seconds(ex: Exchange, done: float) -> float:
    """The histogram's figure: ``proxy;dur`` plus, for an answer whose last byte was written,
    the time from the head to ``done`` (the end of the request's recording) less the waits in
    between that were not the proxy's (0 for an answer without a head figure, which is not
    observed)."""
    if not ex.written_at or not ex.head_at:
        return ex.proxy_ms / 1000
    after_head = done - ex.head_at - ex.body_wait_ms / 1000
    state = ex.scope.get("state")
    if state is not None:
        after_head -= state.get(PAUSED_KEY, 0.0)
    return ex.proxy_ms / 1000 + max(after_head, 0.0)
