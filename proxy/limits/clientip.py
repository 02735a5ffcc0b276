"""Who the client is: the socket peer, or X-Forwarded-For when the peer is a trusted proxy."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(text: str) -> IPAddress | None:
    """An address as proxies write it (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``, ``::1``), with
    IPv4-mapped IPv6 unwrapped so one client never counts as two; None if it is not one."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:  # IPv4 with a port; a bare IPv6 has at least two colons
        text = text.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class TrustedProxies:
    """The networks whose X-Forwarded-For we believe (TRUSTED_PROXIES)."""

    __slots__ = ("_seen", "networks", "unix")

    def __init__(self, networks: Iterable[IPNetwork] = (), *, unix: bool = False) -> None:
        self.networks = tuple(networks)
        self.unix = unix
        self._seen: dict[str, bool] = {}  # peer text -> trusted; peers are few (the proxies)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> TrustedProxies:
        """From CIDRs or bare addresses, plus ``unix`` for a Unix-socket peer."""
        networks: list[IPNetwork] = []
        unix = False
        for entry in entries:
            if entry.strip().lower() == "unix":
                unix = True
            else:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        return cls(networks, unix=unix)

    def __bool__(self) -> bool:
        return bool(self.networks) or self.unix

    def trusts(self, ip: IPAddress) -> bool:
        return any(ip in net for net in self.networks)

    def trusts_peer(self, peer: str) -> bool:
        known = self._seen.get(peer)
        if known is None:
            ip = parse_ip(peer)
            known = ip is not None and self.trusts(ip)
            if len(self._seen) < 4096:  # a bound, in case peers are many after all
                self._seen[peer] = known
        return known


NO_TRUSTED_PROXIES = TrustedProxies()


def client_ip(peer: str | None, forwarded_for: str | None, trusted: TrustedProxies) -> str:
    """The client's address for limits and logs.

    ``peer`` is the socket peer (None on a Unix socket). Unless the peer is a trusted proxy it
    is the answer, whatever X-Forwarded-For claims. Behind trusted proxies, walk the header from
    the right (the hop nearest us) past every trusted address; the first untrusted address is the
    client. Anything left of it was written by the client and is ignored. A malformed entry ends
    the walk at the last trusted hop, so garbage never becomes a fresh rate-limit key. Multiple
    X-Forwarded-For headers must be joined with commas, in order, before the call.
    """
    if peer is None:
        if not trusted.unix:
            return ""
        last = ""
    else:
        if not trusted or not trusted.trusts_peer(peer):
            return peer
        parsed = parse_ip(peer)
        last = str(parsed) if parsed is not None else peer
    if not forwarded_for:
        return last
    for hop in reversed(forwarded_for.split(",")):
        ip = parse_ip(hop)
        if ip is None:
            return last
        if not trusted.trusts(ip):
            return str(ip)
        last = str(ip)
    return last  # every hop is trusted: the leftmost is as close to the client as we know


def limit_key(ip: str) -> str:
    """The bucket an address is counted in: the address itself for IPv4, its /64 for IPv6 (one
    subscriber usually holds a whole /64 and could rotate through it)."""
    if ":" not in ip:
        return ip
    parsed = parse_ip(ip)
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((int(parsed) >> 64 << 64, 64)))
    return str(parsed) if parsed is not None else ip


def scope_client_ip(scope: Mapping[str, Any], trusted: TrustedProxies) -> str:
    """``client_ip`` for an ASGI HTTP scope: the peer from ``scope["client"]``, and every
    X-Forwarded-For header joined in order (read only when some proxy is trusted)."""
    client = scope.get("client")
    peer = client[0] if client else None
    if not trusted:
        return peer or ""
    values = [v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for"]
    return client_ip(peer, ",".join(values) or None, trusted)
