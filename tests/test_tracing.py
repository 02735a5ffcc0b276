"""OpenTelemetry traces from a real proxy (gunicorn) to a real OTLP/HTTP receiver on loopback:
one trace per request, continuing the client's traceparent, with its phases, GenAI attributes,
the upstream told the same trace, the trace id on the request's event; no secret or body in any
attribute."""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.crypto import new_key
from tests.deploy_wiring import COMPOSE_DIR, nginx_for_loopback, require_tool
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.proxy_process import UNLIMITED, DispatcherProcess, ProxyProcess, provision, terminate
from tests.services import (
    REDIS_HOST,
    REDIS_PORT,
    create_database,
    drop_database,
    free_port,
    port_open,
)
from tests.services import require as require_service
from tests.upstream_fake import FakeUpstream, events_of

UPSTREAM_KEY = "sk-upstream-KEY-abcdef123456"
PROMPT = "a prompt that must never become an attribute"


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver().start()
    yield server
    server.stop()


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream().start()
    yield upstream
    upstream.stop()


def children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> dict[str, ReceivedSpan]:
    return {s.name: s for s in spans if s.parent_span_id == parent.span_id}


@contextlib.contextmanager
def nginx_in_front(proxy_port: int, root: Path) -> Iterator[str]:
    """compose/nginx.conf, on loopback, in front of the proxy; its URL."""
    nginx = require_tool("nginx")
    prefix = root / "nginx"
    prefix.mkdir()
    port = free_port()
    conf = (COMPOSE_DIR / "nginx.conf").read_text()
    conf_path = prefix / "nginx.conf"
    conf_path.write_text(nginx_for_loopback(conf, [f"127.0.0.1:{proxy_port}"], f"127.0.0.1:{port}"))
    command = [nginx, "-p", f"{prefix}/", "-e", "stderr", "-c", str(conf_path)]
    with open(root / "nginx.log", "ab") as log:
        proc = subprocess.Popen(
            [*command, "-g", "daemon off;"], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 15
        while not port_open("127.0.0.1", port):
            assert proc.poll() is None, (root / "nginx.log").read_text()
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        terminate(proc)


@pytest.mark.parametrize("via", ["direct", "nginx"])
def test_a_request_is_one_trace_continuing_the_clients(
    tmp_path: Path, receiver: OtlpReceiver, fake: FakeUpstream, via: str
) -> None:
    db = tmp_path / "proxy.db"
    env = {
        **UNLIMITED,
        "DATABASE_URL": f"sqlite:///{db}",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_SERVICE_NAME": "gateway-under-test",
    }
    creds = provision(env, tmp_path, fake.base_url, api_key=UPSTREAM_KEY)
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=1).start()
    client_trace, client_span = secrets.token_hex(16), secrets.token_hex(8)
    front = nginx_in_front(proxy.port, tmp_path) if via == "nginx" else contextlib.nullcontext()
    try:
        with front as nginx_url:
            url = nginx_url or proxy.url
            reply = httpx.post(
                f"{url}/v1/chat/completions",
                headers={
                    "Authorization": f"Bearer {creds.token}",
                    "traceparent": f"00-{client_trace}-{client_span}-01",
                },
                json={"model": "gpt-fake", "messages": [{"role": "user", "content": PROMPT}]},
                timeout=30,
            )
        assert reply.status_code == 200, reply.text
        spans = receiver.wait_for(
            lambda got: any(s.name == "POST /v1/chat/completions" for s in got)
        )
    finally:
        proxy.stop()

    (root,) = [s for s in spans if s.name == "POST /v1/chat/completions"]
    assert root.service == "gateway-under-test"
    assert root.trace_id == client_trace
    assert root.parent_span_id == client_span
    assert root.kind == 2  # SERVER
    attrs = root.attributes
    assert attrs["gen_ai.system"] == "openai"
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "gpt-fake"
    assert attrs["gen_ai.response.model"] == reply.json()["model"]
    usage = reply.json()["usage"]
    assert attrs["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert attrs["http.response.status_code"] == 200
    assert attrs["llm_proxy.request_id"] == reply.headers["x-request-id"]
    assert attrs["llm_proxy.cache_status"] in {"miss", "bypass"}

    phases = children(spans, root)
    assert set(phases) >= {
        "route",
        "auth",
        "read body",
        "limits",
        "accepted record",
        "upstream POST",
        "record",
    }
    upstream = phases["upstream POST"]
    assert upstream.kind == 3  # CLIENT
    under_upstream = children(spans, upstream)
    assert set(under_upstream) == {"upstream connect", "upstream first byte", "streaming"}
    assert "first byte to client" in under_upstream["streaming"].events
    for span in under_upstream.values():
        assert upstream.start_ns <= span.start_ns <= span.end_ns <= upstream.end_ns, span.name
    order = [under_upstream[n] for n in ("upstream connect", "upstream first byte", "streaming")]
    assert [s.start_ns for s in order] == sorted(s.start_ns for s in order)
    for span in spans:
        assert span.trace_id == client_trace
        assert root.start_ns <= span.start_ns <= span.end_ns <= root.end_ns, span.name
    assert phases["auth"].end_ns <= phases["read body"].start_ns <= upstream.start_ns

    # the upstream was told this trace, its parent being the upstream span
    (seen,) = events_of(fake, "/v1/chat/completions")
    assert seen.headers["traceparent"] == f"00-{client_trace}-{upstream.span_id}-01"

    # no secret, no body, in any attribute
    values = " ".join(str(v) for s in spans for v in s.attributes.values())
    for secret in (creds.token, UPSTREAM_KEY, PROMPT):
        assert secret not in values

    # the request's event carries its trace
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT trace_id, span_id FROM request_events").fetchall()
    assert rows == [(client_trace, root.span_id)]


def test_without_an_endpoint_nothing_is_traced_or_propagated(
    tmp_path: Path, receiver: OtlpReceiver, fake: FakeUpstream
) -> None:
    db = tmp_path / "proxy.db"
    env = {**UNLIMITED, "DATABASE_URL": f"sqlite:///{db}"}
    creds = provision(env, tmp_path, fake.base_url)
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=1).start()
    try:
        reply = httpx.get(
            f"{proxy.url}/v1/models",
            headers={
                "Authorization": f"Bearer {creds.token}",
                "traceparent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01",
            },
        )
        assert reply.status_code == 200
    finally:
        proxy.stop()
    (seen,) = events_of(fake, "/v1/models")
    assert "traceparent" not in seen.headers  # a client header we do not forward
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT trace_id FROM request_events").fetchall() == [("",)]
    assert receiver.requests == 0


def test_the_dispatchers_batch_span_links_to_the_requests_it_writes(
    tmp_path: Path, receiver: OtlpReceiver, fake: FakeUpstream
) -> None:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    pg_url = create_database()
    tag = uuid.uuid4().hex[:8]
    env = {
        **UNLIMITED,
        "DB_DRIVER": "postgres",
        "DATABASE_URL": pg_url,
        "ENCRYPTION_KEY": new_key(),
        "REDIS_ADDR": f"{REDIS_HOST}:{REDIS_PORT}",
        "LLM_PROXY_EVENT_BUS": "redis-streams",
        "REDIS_STREAM_KEY": f"t{tag}-events",
        "REDIS_CONSUMER_GROUP": f"t{tag}-dispatchers",
        "EVENT_SPOOL_DIR": str(tmp_path / "spool"),
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url + "/v1/traces",
    }
    proxy = dispatcher = None
    try:
        creds = provision(env, tmp_path, fake.base_url)
        proxy = ProxyProcess(env=env, cwd=tmp_path, workers=2).start()
        dispatcher = DispatcherProcess(env, tmp_path).start()
        auth = {"Authorization": f"Bearer {creds.token}"}
        for _ in range(3):
            assert httpx.get(f"{proxy.url}/v1/models", headers=auth).status_code == 200
        spans = receiver.wait_for(
            lambda got: (
                len([s for s in got if s.name == "GET /v1/models"]) == 3
                and sum(len(s.links) for s in got if s.name == "write batch") >= 3
            )
        )
    finally:
        for process in (dispatcher, proxy):
            if process is not None:
                process.stop()
        drop_database(pg_url)
    requests = {(s.trace_id, s.span_id) for s in spans if s.name == "GET /v1/models"}
    batches = [s for s in spans if s.name == "write batch"]
    assert {s.service for s in batches} == {"llm-proxy-dispatcher"}
    linked = {link for s in batches for link in s.links}
    assert requests <= linked
    assert sum(s.attributes["llm_proxy.batch.inserted"] for s in batches) == 3
