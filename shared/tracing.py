"""OpenTelemetry's tracer provider, built from the OTEL_* settings (needs the `otel` extra)."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import unquote

from shared.config import ConfigError, Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import Sampler
    from opentelemetry.trace import Link, Tracer

#: A batch span links to every request it writes; the SDK's default keeps only 128 links.
MAX_LINKS = 5000


def traces_endpoint(settings: Settings) -> str:
    """Where spans are sent, as the OTLP/HTTP specification derives it; empty: tracing off."""
    if settings.otel_exporter_otlp_traces_endpoint:
        return settings.otel_exporter_otlp_traces_endpoint
    base = settings.otel_exporter_otlp_endpoint
    return base.rstrip("/") + "/v1/traces" if base else ""


def export_headers(text: str) -> dict[str, str]:
    """OTEL_EXPORTER_OTLP_HEADERS: ``key=value`` pairs, comma-separated, values URL-encoded."""
    headers = {}
    for pair in text.split(","):
        if not pair.strip():
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError("OTEL_EXPORTER_OTLP_HEADERS must be key=value pairs, got (hidden)")
        headers[unquote(key.strip()).lower()] = unquote(value.strip())
    return headers


_MISSING = (
    "OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed: "
    "pip install 'llm-proxy[otel]'"
)


def check_available(settings: Settings) -> None:
    """Refuse at start, in one line, tracing that is configured but cannot run."""
    if not traces_endpoint(settings):
        return
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        raise ConfigError(_MISSING) from None


class OtelTracing:
    """A tracer exporting over OTLP/HTTP in batches from a background thread (so the request
    path never waits on the collector); ``shutdown`` flushes what is queued."""

    def __init__(self, settings: Settings, service: str) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import SpanLimits, TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            raise ConfigError(_MISSING) from None
        resource = Resource({"service.name": settings.otel_service_name or service})
        self.provider: TracerProvider = TracerProvider(
            resource=resource,
            sampler=sampler(settings.otel_traces_sampler, settings.otel_traces_sampler_arg),
            span_limits=SpanLimits(max_links=MAX_LINKS),
        )
        exporter = OTLPSpanExporter(
            endpoint=traces_endpoint(settings),
            headers=export_headers(settings.otel_exporter_otlp_headers.get()),
            timeout=10,
        )
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer: Tracer = self.provider.get_tracer("llm_proxy")

    def shutdown(self) -> None:
        self.provider.shutdown()


def sampler(name: str, ratio: float) -> Sampler:
    from opentelemetry.sdk.trace import sampling

    base = name.removeprefix("parentbased_")
    root: Sampler = (
        sampling.ALWAYS_ON
        if base == "always_on"
        else sampling.ALWAYS_OFF
        if base == "always_off"
        else sampling.TraceIdRatioBased(ratio)
    )
    return sampling.ParentBased(root) if name.startswith("parentbased_") else root


def make_tracing(settings: Settings, service: str) -> OtelTracing | None:
    """The tracing of a process, or None when no OTLP endpoint is configured."""
    return OtelTracing(settings, service) if traces_endpoint(settings) else None


def links_to(spans: list[tuple[str, str]]) -> list[Link]:
    """Links to spans given as (trace id, span id) in hex (a batch span to the requests it
    writes); malformed or empty ids are skipped."""
    from opentelemetry import trace

    links = []
    for trace_id, span_id in spans:
        try:
            context = trace.SpanContext(
                int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=trace.TraceFlags(1)
            )
        except ValueError:
            continue
        if context.is_valid:
            links.append(trace.Link(context))
    return links
