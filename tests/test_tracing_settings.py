"""The OTEL_* settings: where spans go, which are kept, the export headers; bad values refused
with one line naming the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import sampling

from shared.config import ConfigError, Settings
from shared.tracing import export_headers, links_to, make_tracing, sampler, traces_endpoint
from tests.proxy_process import BASE_ENV


@pytest.mark.parametrize(
    ("env", "endpoint"),
    [
        ({}, ""),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318"}, "http://otel:4318/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318/"}, "http://otel:4318/v1/traces"),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://traces.example/ingest",
            },
            "https://traces.example/ingest",
        ),
    ],
)
def test_the_traces_endpoint_is_derived_as_otlp_says(env: dict[str, str], endpoint: str) -> None:
    settings = Settings.from_env(env)
    assert traces_endpoint(settings) == endpoint
    tracing = make_tracing(settings, "llm-proxy")
    assert (tracing is None) == (endpoint == "")
    if tracing is not None:
        tracing.shutdown()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "otel:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT must be"),
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER must be one of"),
        ({"OTEL_TRACES_SAMPLER_ARG": "1.5"}, "OTEL_TRACES_SAMPLER_ARG must be a number from 0"),
        ({"OTEL_TRACES_SAMPLER_ARG": "half"}, "OTEL_TRACES_SAMPLER_ARG must be a number from 0"),
    ],
)
def test_bad_values_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_export_headers_are_parsed_and_never_shown() -> None:
    assert export_headers("api-key=s3cr%3Dt, X-Team = llm ") == {
        "api-key": "s3cr=t",
        "x-team": "llm",
    }
    assert export_headers("") == {}
    with pytest.raises(ConfigError) as raised:
        export_headers("api-key")
    assert "api-key" not in str(raised.value).split("got")[1]
    settings = Settings.from_env({"OTEL_EXPORTER_OTLP_HEADERS": "api-key=s3cret"})
    assert "s3cret" not in repr(settings)


def test_samplers_by_name() -> None:
    assert sampler("always_on", 1.0) is sampling.ALWAYS_ON
    assert sampler("always_off", 1.0) is sampling.ALWAYS_OFF
    ratio = sampler("traceidratio", 0.25)
    assert isinstance(ratio, sampling.TraceIdRatioBased) and ratio.rate == 0.25
    parent = sampler("parentbased_traceidratio", 0.1)
    assert isinstance(parent, sampling.ParentBased)
    assert "TraceIdRatioBased{0.1}" in parent.get_description()


def test_links_skip_what_is_not_a_span_id() -> None:
    good = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    links = links_to([good, ("", ""), ("zz", "b7ad6b7169203331"), ("0" * 32, "1" * 16)])
    assert [(f"{ln.context.trace_id:032x}", f"{ln.context.span_id:016x}") for ln in links] == [good]


def test_tracing_configured_without_the_sdk_stops_the_server_in_one_line(tmp_path: Path) -> None:
    hide_sdk = (
        "import sys; sys.modules['opentelemetry.sdk.trace'] = None; "
        "sys.argv = ['llm-proxy', 'server']; from admin.cli import main; main()"
    )
    env = {**BASE_ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9/"}
    done = subprocess.run(
        [sys.executable, "-c", hide_sdk], env=env, cwd=tmp_path, capture_output=True, timeout=60
    )
    assert done.returncode != 0
    assert "OpenTelemetry is not installed: pip install 'llm-proxy[otel]'" in done.stderr.decode()
