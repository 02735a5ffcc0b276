"""One OpenTelemetry trace per proxied request: a server span, its phases, the upstream call.

The phases are the request's phase marks (``Exchange.marks``, shared with the profiler): with
tracing on the handler keeps them, and the phase spans are made from them when the request
ends, with their real start and end times. Only the upstream span is started live, because its
id must be in the ``traceparent`` the upstream receives. With tracing off the request pays an
``is None`` check per hook. Bodies, keys and tokens never become attributes.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import orjson
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from proxy.usage import Usage
from shared.tracing import OtelTracing

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from proxy.exchange import Exchange

# span names of the phases (proxy/profiling.py PHASES) under the server span ...
_PHASES = {
    "route": "route",
    "auth": "auth",
    "body": "read body",
    "cache": "cache lookup",
    "limits": "limits",  # the cache lookup too, when both ran at once on Redis
    "accept": "accepted record",
    "record": "record",
}
# ... and under the upstream span
_UPSTREAM_PHASES = {
    "upstream_connect": "upstream connect",
    "upstream_first_byte": "upstream first byte",
    "stream": "streaming",
}
_OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/responses": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
}
_PROPAGATOR = TraceContextTextMapPropagator()
log = logging.getLogger("llm_proxy.tracing")
_MAX_MODEL_BODY = 1 << 20  # the request's model is read from bodies up to this size


class RequestTracing:
    """Built once per worker when tracing is configured; ``begin`` starts a request's trace."""

    def __init__(self, otel: OtelTracing) -> None:
        self.otel = otel
        self.tracer = otel.tracer

    def begin(self, ex: Exchange, arrived: float) -> RequestTrace:
        return RequestTrace(self.tracer, ex, arrived)

    def shutdown(self) -> None:
        self.otel.shutdown()


class RequestTrace:
    __slots__ = ("_offset_ns", "_tracer", "_upstream", "root", "span_id", "trace_id")

    def __init__(self, tracer: trace.Tracer, ex: Exchange, arrived: float) -> None:
        self._tracer = tracer
        carrier = {}
        for name, value in ex.scope["headers"]:
            if name == b"traceparent" or name == b"tracestate":
                carrier[name.decode()] = value.decode("latin-1")
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        # perf_counter moments become epoch nanoseconds through the arrival's pair of clocks
        self._offset_ns = int(arrived * 1e9) - int(ex.started * 1e9)
        self.root: Span = tracer.start_span(
            ex.method, context=parent, kind=SpanKind.SERVER, start_time=int(arrived * 1e9)
        )
        context = self.root.get_span_context()
        self.trace_id = trace.format_trace_id(context.trace_id) if context.is_valid else ""
        self.span_id = trace.format_span_id(context.span_id) if context.is_valid else ""
        self._upstream: tuple[Span, float] | None = None

    def upstream(self, ex: Exchange, headers: dict[str, str]) -> None:
        """Start the upstream call's span and tell the upstream its traceparent."""
        span = self._tracer.start_span(
            "upstream " + ex.method,
            context=trace.set_span_in_context(self.root),
            kind=SpanKind.CLIENT,
        )
        span.set_attribute("http.request.method", ex.method)
        _PROPAGATOR.inject(headers, context=trace.set_span_in_context(span))
        self._upstream = (span, time.perf_counter())

    def finish(self, ex: Exchange) -> None:
        """The phase spans, the attributes, the end of every span; never raises (a trace must
        not fail the request it describes)."""
        if not self.root.is_recording():
            return
        try:
            self._finish(ex)
        except Exception:
            log.exception("finishing a request's trace failed")
            self.root.end()

    def _finish(self, ex: Exchange) -> None:
        tracer = self._tracer
        parent = trace.set_span_in_context(self.root)
        upstream = self._upstream
        inner = trace.set_span_in_context(upstream[0]) if upstream is not None else parent
        begin = ex.started
        upstream_end = 0.0
        for phase, at in ex.marks or ():
            name = _UPSTREAM_PHASES.get(phase)
            if name is not None:
                if upstream is not None:  # marks before the send (accept) end before it
                    begin = max(begin, upstream[1])
                span = self._span(tracer, name, inner, begin, at, end_it=False)
                if phase == "stream":
                    if ex.ttfb_ms:
                        first = self._ns(ex.started + ex.ttfb_ms / 1000)
                        span.add_event("first byte to client", timestamp=first)
                    span.set_attribute("llm_proxy.response_bytes", ex.response_bytes)
                span.end(end_time=self._ns(at))
                upstream_end = at
            else:
                self._span(tracer, _PHASES.get(phase, phase), parent, begin, at)
            begin = at
        now = time.perf_counter()
        if not ex.marks or ex.marks[-1][0] != "record":  # the profiler marks it, if it is on
            self._span(tracer, "record", parent, begin, now)
        if upstream is not None:
            span, _ = upstream
            if ex.status:
                span.set_attribute("http.response.status_code", ex.status)
            span.end(end_time=self._ns(upstream_end or now))
        self._describe(ex)
        self.root.end()

    def _describe(self, ex: Exchange) -> None:
        root = self.root
        route = ex.endpoint
        root.update_name(f"{ex.method} {route}")
        attributes: dict[str, Any] = {
            "http.request.method": ex.method,
            "http.route": route,
            "http.response.status_code": ex.status,
            "llm_proxy.request_id": ex.request_id,
            "llm_proxy.stream": ex.stream,
        }
        if ex.cache_status:
            attributes["llm_proxy.cache_status"] = ex.cache_status
        cred = ex.cred
        if cred is not None:
            attributes["llm_proxy.project_id"] = cred.project_id
            attributes["llm_proxy.token_id"] = cred.token_id
        operation = _OPERATIONS.get(route)
        if operation is not None:
            attributes["gen_ai.system"] = "openai"
            attributes["gen_ai.operation.name"] = operation
            model = _request_model(ex.body)
            if model:
                attributes["gen_ai.request.model"] = model
        usage: Usage | None = ex.usage
        if usage is not None:
            if usage.model:
                attributes["gen_ai.response.model"] = usage.model
            if usage.total_tokens:
                attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
                attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
            if usage.source:
                attributes["llm_proxy.usage_source"] = usage.source
        if ex.error:
            attributes["error.type"] = ex.error
        root.set_attributes(attributes)
        if ex.status >= 500 or (ex.error and not ex.status):
            root.set_status(Status(StatusCode.ERROR, ex.error or None))

    def _span(
        self,
        tracer: trace.Tracer,
        name: str,
        parent: Any,
        start: float,
        end: float,
        *,
        end_it: bool = True,
    ) -> Span:
        span = tracer.start_span(name, context=parent, start_time=self._ns(start))
        if end_it:
            span.end(end_time=self._ns(end))
        return span

    def _ns(self, moment: float) -> int:
        return int(moment * 1e9) + self._offset_ns


def _request_model(body: object) -> str:
    """The ``model`` of a JSON request body (never anything else of it)."""
    if not isinstance(body, bytes) or not body or len(body) > _MAX_MODEL_BODY:
        return ""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    model = obj.get("model") if isinstance(obj, dict) else None
    return model[:200] if isinstance(model, str) else ""
