"""The egress proxy: which upstream origins go through HTTP_PROXY / HTTPS_PROXY (NO_PROXY alone
decides what bypasses it, loopback included), and opening a CONNECT tunnel for https."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
from dataclasses import dataclass

from shared.config import ProxyUrl
from shared.errors import UpstreamError

_MAX_CONNECT_REPLY = 16 * 1024


@dataclass(frozen=True, slots=True)
class ProxyServer:
    """An http:// proxy: its address and, if its URL carried credentials, the header line."""

    host: str
    port: int
    authorization: bytes = b""  # b"proxy-authorization: Basic ...\r\n" or b""

    @classmethod
    def of(cls, url: ProxyUrl) -> ProxyServer:
        auth = b""
        if url.username or url.password:
            basic = base64.b64encode(f"{url.username}:{url.password.get()}".encode())
            auth = b"proxy-authorization: Basic " + basic + b"\r\n"
        return cls(url.host, url.port, auth)


class NoProxy:
    """NO_PROXY entries: ``*``, host names (``example.com`` and ``.example.com`` both match the
    name and its subdomains), IP addresses and CIDR blocks, each optionally with ``:port``."""

    def __init__(self, text: str) -> None:
        self.everything = False
        self.names: list[tuple[str, int | None]] = []
        self.networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int | None]] = []
        for raw in text.split(","):
            entry = raw.strip().lower()
            if not entry:
                continue
            if entry == "*":
                self.everything = True
                continue
            host, port = _split_port(entry)
            try:
                self.networks.append((ipaddress.ip_network(host, strict=False), port))
            except ValueError:
                self.names.append((host.lstrip(".").rstrip("."), port))

    def bypasses(self, host: str, port: int) -> bool:
        if self.everything:
            return True
        host = host.lower().rstrip(".")
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            address = None
        if address is not None:
            return any(address in net and (p is None or p == port) for net, p in self.networks)
        return any(
            (host == name or host.endswith("." + name)) and (p is None or p == port)
            for name, p in self.names
        )


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):  # [v6]:port
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        if port.isdigit():
            return host, int(port)
    return entry, None


class Egress:
    """Which proxy, if any, carries traffic to an origin."""

    def __init__(
        self, http_proxy: ProxyUrl | None, https_proxy: ProxyUrl | None, no_proxy: str
    ) -> None:
        self.http = ProxyServer.of(http_proxy) if http_proxy else None
        self.https = ProxyServer.of(https_proxy) if https_proxy else None
        self.no_proxy = NoProxy(no_proxy)

    def proxy_for(self, scheme: str, host: str, port: int) -> ProxyServer | None:
        proxy = self.https if scheme == "https" else self.http
        if proxy is None or self.no_proxy.bypasses(host, port):
            return None
        return proxy


async def open_tunnel(proxy: ProxyServer, host: str, port: int) -> socket.socket:
    """A socket connected through ``proxy`` to ``host:port`` by CONNECT (TLS goes on top)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
    if not infos:
        raise UpstreamError("The egress proxy could not be resolved.")
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, address)
        authority = (f"[{host}]" if ":" in host else host).encode("idna") + b":%d" % port
        request = b"CONNECT %b HTTP/1.1\r\nhost: %b\r\n" % (authority, authority)
        await loop.sock_sendall(sock, request + proxy.authorization + b"\r\n")
        reply = b""
        while b"\r\n\r\n" not in reply:
            data = await loop.sock_recv(sock, 4096)
            if not data or len(reply) > _MAX_CONNECT_REPLY:
                raise UpstreamError("The egress proxy closed the tunnel.")
            reply += data
        status_line, _, _ = reply.partition(b"\r\n")
        fields = status_line.split(b" ", 2)
        if len(fields) < 2 or not fields[0].startswith(b"HTTP/1.") or fields[1][:1] != b"2":
            raise UpstreamError("The egress proxy refused the tunnel.")
        if not reply.endswith(b"\r\n\r\n"):  # a proxy must not speak before the tunnel is ours
            raise UpstreamError("The egress proxy sent bytes after its answer.")
        return sock
    except BaseException:
        sock.close()
        raise
