"""Leaving through an egress proxy (real tinyproxy on loopback: absolute form for http, a
CONNECT tunnel for https, NO_PROXY the only bypass) and presenting a client certificate to an
upstream that requires one (a real uvicorn with CERT_REQUIRED)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.upstream.egress import NoProxy
from shared.errors import ConfigError, UpstreamError
from tests.deploy_wiring import require_tool
from tests.proxy_process import UNLIMITED, ProxyProcess, provision, terminate
from tests.recording_upstream import RecordingUpstream
from tests.services import free_port, port_open
from tests.test_upstream_client import Server, client, get, keep_answering, started


@dataclass
class Tinyproxy:
    port: int
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lines(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_tinyproxy(root: Path, *extra: str) -> Tinyproxy:
    binary = require_tool("tinyproxy")
    port = free_port()
    log = root / "tinyproxy.log"
    conf = root / "tinyproxy.conf"
    conf.write_text(
        "\n".join(
            [
                f"Port {port}",
                "Listen 127.0.0.1",
                "Timeout 60",
                f'LogFile "{log}"',
                "LogLevel Info",
                "MaxClients 20",
                "Allow 127.0.0.1",
                *extra,
            ]
        )
        + "\n"
    )
    proc = subprocess.Popen(
        [binary, "-d", "-c", str(conf)], stderr=subprocess.STDOUT, stdout=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 15
    while not port_open("127.0.0.1", port):
        assert proc.poll() is None, log.read_text() if log.exists() else "tinyproxy exited"
        assert time.monotonic() < deadline, "tinyproxy did not start"
        time.sleep(0.05)
    return Tinyproxy(port, log, proc)


@pytest.fixture
def tinyproxy(tmp_path: Path) -> Iterator[Tinyproxy]:
    proxy = start_tinyproxy(tmp_path)
    yield proxy
    terminate(proxy.proc)  # type: ignore[arg-type]


# --- certificates, made here ---


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    subject: str, key: Any, issuer: tuple[x509.Name, Any] | None, *, ca: bool, ip: bool
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer or (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ip:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: Any) -> tuple[Path, Path]:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path.with_suffix(".crt"), path.with_suffix(".key")


@dataclass
class Pki:
    ca: Path
    server: tuple[Path, Path]
    client: tuple[Path, Path]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca_key = _key()
    ca = _cert("test CA", ca_key, None, ca=True, ip=False)
    ca_path, _ = _write(tmp_path / "ca", ca, ca_key)
    server_key, client_key = _key(), _key()
    server = _cert("127.0.0.1", server_key, (ca.subject, ca_key), ca=False, ip=True)
    client_cert = _cert("llm-proxy", client_key, (ca.subject, ca_key), ca=False, ip=False)
    return Pki(
        ca_path,
        _write(tmp_path / "server", server, server_key),
        _write(tmp_path / "client", client_cert, client_key),
    )


# --- egress ---


async def test_http_upstreams_go_through_http_proxy_in_absolute_form(
    tinyproxy: Tinyproxy,
) -> None:
    server = await Server(keep_answering).start()
    upstream = await started(client(HTTP_PROXY=tinyproxy.url))
    for _ in range(2):
        assert await get(upstream, server.port) == (200, b"{}")
    await upstream.close()
    await server.stop()
    # tinyproxy rewrote our absolute-form request line and says it was there
    assert all(b"via: 1.1 " in r.lower() for r in server.requests), server.requests
    assert f"GET http://127.0.0.1:{server.port}/v1/models" in tinyproxy.lines()


async def test_https_upstreams_go_through_a_connect_tunnel(tinyproxy: Tinyproxy, pki: Pki) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*pki.server)
    server = await Server(keep_answering).start(ctx)
    upstream = await started(client(HTTPS_PROXY=tinyproxy.url, UPSTREAM_CA_FILE=str(pki.ca)))
    for _ in range(2):
        assert await get(upstream, server.port, scheme="https") == (200, b"{}")
    assert server.connections == 1  # the tunnel is kept alive like any connection
    await upstream.close()
    await server.stop()
    assert f"CONNECT 127.0.0.1:{server.port}" in tinyproxy.lines()
    assert all(b"via:" not in r.lower() for r in server.requests)  # TLS end to end


async def test_no_proxy_alone_decides_what_bypasses(tinyproxy: Tinyproxy) -> None:
    server = await Server(keep_answering).start()
    dead = f"http://127.0.0.1:{free_port()}"  # nobody listens: going there fails
    bypass = await started(client(HTTP_PROXY=dead, NO_PROXY="localhost,127.0.0.0/8"))
    assert await get(bypass, server.port) == (200, b"{}")
    await bypass.close()
    through = await started(client(HTTP_PROXY=dead, NO_PROXY="example.internal"))
    with pytest.raises(UpstreamError):  # loopback is not bypassed unless NO_PROXY says so
        await get(through, server.port)
    await through.close()
    await server.stop()
    assert all(b"via:" not in r.lower() for r in server.requests)


async def test_proxy_credentials_from_the_url(tmp_path: Path, pki: Pki) -> None:
    proxy = start_tinyproxy(tmp_path, "BasicAuth egress s3cret")
    try:
        server = await Server(keep_answering).start()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(*pki.server)
        tls = await Server(keep_answering).start(ctx)
        authed = f"http://egress:s3cret@127.0.0.1:{proxy.port}"
        upstream = await started(
            client(HTTP_PROXY=authed, HTTPS_PROXY=authed, UPSTREAM_CA_FILE=str(pki.ca))
        )
        assert await get(upstream, server.port) == (200, b"{}")
        assert await get(upstream, tls.port, scheme="https") == (200, b"{}")
        await upstream.close()
        anonymous = await started(client(HTTPS_PROXY=proxy.url, UPSTREAM_CA_FILE=str(pki.ca)))
        with pytest.raises(UpstreamError):  # 407 to the CONNECT: no tunnel
            await get(anonymous, tls.port, scheme="https")
        await anonymous.close()
        await server.stop()
        await tls.stop()
    finally:
        terminate(proxy.proc)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("entries", "host", "port", "bypassed"),
    [
        ("", "127.0.0.1", 80, False),
        ("*", "api.openai.com", 443, True),
        ("openai.com", "api.openai.com", 443, True),
        (".openai.com", "openai.com", 443, True),
        ("openai.com", "notopenai.com", 443, False),
        ("10.0.0.0/8", "10.1.2.3", 80, True),
        ("10.0.0.0/8", "11.1.2.3", 80, False),
        ("::1", "::1", 80, True),
        ("[::1]:8080", "::1", 8080, True),
        ("[::1]:8080", "::1", 80, False),
        ("internal:8443", "internal", 8443, True),
        ("internal:8443", "internal", 443, False),
        (" Internal.Example. , x", "internal.example", 80, True),
    ],
)
def test_no_proxy_entries(entries: str, host: str, port: int, bypassed: bool) -> None:
    assert NoProxy(entries).bypasses(host, port) is bypassed


# --- a client certificate for an upstream that requires one ---


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"{}"})


@pytest.fixture
def mtls_upstream(pki: Pki) -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(
        hello,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        ssl_certfile=str(pki.server[0]),
        ssl_keyfile=str(pki.server[1]),
        ssl_ca_certs=str(pki.ca),
        ssl_cert_reqs=ssl.CERT_REQUIRED,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


async def test_a_client_certificate_is_presented_when_configured(
    mtls_upstream: int, pki: Pki
) -> None:
    cert, key = pki.client
    with_cert = await started(
        client(
            UPSTREAM_CA_FILE=str(pki.ca),
            UPSTREAM_CLIENT_CERT_FILE=str(cert),
            UPSTREAM_CLIENT_KEY_FILE=str(key),
        )
    )
    assert await get(with_cert, mtls_upstream, scheme="https") == (200, b"{}")
    await with_cert.close()
    without = await started(client(UPSTREAM_CA_FILE=str(pki.ca)))
    with pytest.raises(UpstreamError):  # the upstream refuses the handshake or hangs up
        await get(without, mtls_upstream, scheme="https")
    await without.close()


def test_the_server_sends_upstream_traffic_through_the_configured_proxy(
    tinyproxy: Tinyproxy, tmp_path: Path
) -> None:
    """End to end: HTTP_PROXY set on the real server reaches its upstream client."""
    upstream = RecordingUpstream().start()
    env = {**UNLIMITED, "HTTP_CACHE_ENABLED": "false", "HTTP_PROXY": tinyproxy.url}
    creds = provision(env, tmp_path, upstream.base_url)
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=1).start()
    try:
        resp = httpx.post(
            f"{proxy.url}/v1/embeddings",
            headers={"Authorization": f"Bearer {creds.token}"},
            json={"model": "m", "input": "via the egress proxy"},
            timeout=30,
        )
        assert resp.status_code == 200, resp.text
    finally:
        proxy.stop()
        upstream.stop()
    [seen] = upstream.requests()
    assert seen.header(b"via"), seen.headers  # tinyproxy forwarded it
    assert seen.body == b'{"model":"m","input":"via the egress proxy"}'
    assert f"POST http://127.0.0.1:{upstream.port}/v1/embeddings" in tinyproxy.lines()


async def test_an_unusable_client_certificate_stops_the_start_with_one_line(
    pki: Pki, tmp_path: Path
) -> None:
    cert, _ = pki.client
    for env in (
        {"UPSTREAM_CLIENT_CERT_FILE": str(tmp_path / "missing.pem")},
        {"UPSTREAM_CLIENT_CERT_FILE": str(cert), "UPSTREAM_CLIENT_KEY_FILE": str(pki.server[1])},
    ):
        with pytest.raises(ConfigError, match="UPSTREAM_CLIENT_CERT_FILE") as info:
            await client(**env).start()
        assert "\n" not in str(info.value)
