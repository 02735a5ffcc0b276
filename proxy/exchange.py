"""One request's state as it moves through the hot path (one object per request)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from proxy.auth import Credential
from proxy.body import StreamedBody
from proxy.routing import Route
from proxy.usage import Usage

if TYPE_CHECKING:  # OpenTelemetry is an optional extra: imported only when tracing is on
    from proxy.tracing import RequestTrace

Header = tuple[bytes, bytes]


@dataclass(slots=True)
class Exchange:
    scope: dict[str, Any]
    receive: Any
    send: Any
    method: str
    request_id: str
    started: float  # perf_counter at arrival
    extra: list[Header]  # headers every answer carries (request id, CORS, rate limits)
    route: Route | None = None
    cred: Credential | None = None
    body: bytes | StreamedBody | None = None
    # what is known for the event and metrics
    status: int = 0
    endpoint: str = "other"
    upstream_ms: float = 0.0
    proxy_ms: float = 0.0  # Server-Timing's proxy;dur (docs/operations.md "Server-Timing")
    # for llm_proxy_overhead_seconds (proxy/overhead.py): perf_counter moments, and the
    # upstream waits between them
    head_at: float = 0.0  # the answer's head handed to the server
    written_at: float = 0.0  # its last byte handed to the server (0: never finished)
    body_wait_ms: float = 0.0  # waiting on the upstream's body, after the head
    ttfb_ms: float = 0.0
    request_bytes: int = 0
    response_bytes: int = 0
    stream: bool = False
    error: str = ""
    cache_status: str = ""
    usage: Usage | None = None
    upstream: str = ""  # the upstream that served (its id; '' for the project's own)
    attempts: int = 0  # upstream calls made
    response_started: bool = field(default=False)
    event_id: str = ""  # set when the accepted record is published; the final reuses it
    marks: list[tuple[str, float]] | None = None  # phase ends, with PROFILING_ENABLED
    trace: RequestTrace | None = None  # only with tracing on (proxy/tracing.py)
