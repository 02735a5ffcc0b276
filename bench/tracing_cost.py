"""What tracing costs a request: the hooks with tracing off, and a whole trace with it on.

    python -m bench.tracing_cost

Off, a request meets four ``is None`` checks more than without tracing (handler and relay); on,
it keeps the phase marks, builds a RequestTrace, starts the upstream span, injects the
traceparent and ends twelve spans into a BatchSpanProcessor whose exporter drops them (export
runs on the SDK's thread, not the request's).
"""

from __future__ import annotations

import statistics
import time
import timeit
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from proxy.exchange import Exchange
from proxy.tracing import RequestTrace
from proxy.usage import Usage

HOOKS = 4  # the `is None` checks tracing adds to a request with tracing off
PHASES = ("route", "auth", "body", "cache", "limits", "accept")
UPSTREAM = ("upstream_connect", "upstream_first_byte", "stream")


class _Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _exchange() -> Exchange:
    scope = {
        "headers": [
            (b"authorization", b"Bearer x"),
            (b"content-type", b"application/json"),
            (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ],
        "path": "/v1/chat/completions",
    }
    ex = Exchange(scope, None, None, "POST", "req-1", time.perf_counter(), [])
    ex.endpoint = "/v1/chat/completions"
    ex.status = 200
    ex.body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
    ex.usage = Usage(model="gpt-4o-mini", prompt_tokens=9, completion_tokens=12, total_tokens=21)
    ex.upstream_ms = 1.0
    ex.ttfb_ms = 1.2
    return ex


def hooks_off(ex: Exchange = _exchange()) -> None:  # noqa: B008 (built once, on purpose)
    # the shape of the hot path's checks, tracing off: an attribute load and a compare each
    for _ in range(HOOKS):
        if ex.trace is not None:
            ex.trace.finish(ex)


def nothing() -> None:
    for _ in range(HOOKS):
        pass


def main() -> None:
    number = 200_000
    off = [timeit.timeit(hooks_off, number=number) for _ in range(15)]
    base = [timeit.timeit(nothing, number=number) for _ in range(15)]
    # min: the least-disturbed run of each (the machine is shared)
    per_request_off = (min(off) - min(base)) / number * 1e9
    print(f"tracing off: {per_request_off:.0f} ns per request for {HOOKS} checks")

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Drop(), max_queue_size=1_000_000))
    tracer = provider.get_tracer("bench")

    def traced() -> None:
        ex = _exchange()
        marks = ex.marks = []
        trace = RequestTrace(tracer, ex, time.time())
        for phase in PHASES:
            marks.append((phase, time.perf_counter()))
        trace.upstream(ex, {"content-type": "application/json"})
        for phase in UPSTREAM:
            marks.append((phase, time.perf_counter()))
        trace.finish(ex)

    def untraced() -> None:
        _exchange()

    def before_head() -> None:  # the part a request waits for: begin, marks, upstream span
        ex = _exchange()
        marks = ex.marks = []
        trace = RequestTrace(tracer, ex, time.time())
        for phase in PHASES:
            marks.append((phase, time.perf_counter()))
        trace.upstream(ex, {"content-type": "application/json"})

    number = 5_000
    head = [timeit.timeit(before_head, number=number) for _ in range(5)]
    on = [timeit.timeit(traced, number=number) for _ in range(5)]
    plain = [timeit.timeit(untraced, number=number) for _ in range(5)]
    per_request_on = (statistics.median(on) - statistics.median(plain)) / number * 1e6
    per_request_head = (statistics.median(head) - statistics.median(plain)) / number * 1e6
    print(f"tracing on:  {per_request_on:.0f} µs per request (12 spans, sampled)")
    print(f"  of which before the response head: {per_request_head:.0f} µs")
    provider.shutdown()


if __name__ == "__main__":
    main()
