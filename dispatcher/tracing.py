"""The dispatcher's span per written batch, linked to the spans of the requests it records."""

from __future__ import annotations

import time
from collections.abc import Sequence

from dispatcher.entries import Entry
from dispatcher.writer import Outcome
from shared.tracing import OtelTracing, links_to


class BatchTracing:
    def __init__(self, otel: OtelTracing) -> None:
        self.otel = otel

    def batch(self, entries: Sequence[Entry], outcome: Outcome, seconds: float) -> None:
        """One span for a batch just committed (``seconds`` ago it began)."""
        ids = [
            (e.event.trace_id, e.event.span_id)
            for e in entries
            if e.event is not None and e.event.trace_id
        ]
        now = time.time_ns()
        span = self.otel.tracer.start_span(
            "write batch",
            start_time=now - int(seconds * 1e9),
            links=links_to(ids),
            attributes={
                "llm_proxy.batch.size": len(entries),
                "llm_proxy.batch.inserted": len(outcome.inserted),
                "llm_proxy.batch.duplicates": outcome.duplicates,
                "llm_proxy.batch.dead_letters": len(outcome.dead_letters),
                "llm_proxy.batch.transactions": outcome.transactions,
            },
        )
        span.end(end_time=now)

    def shutdown(self) -> None:
        self.otel.shutdown()
