"""Where Redis is and how to talk to it: REDIS_ADDR and its companions, parsed once.

Every Redis client of every process (redis-py, the dramatiq broker, the proxy's lean client) is
built from one ``RedisSettings``; none reads the address text again. Accepted addresses:

- ``host``, ``host:port``, ``[::1]:port``
- ``redis://[[user]:password@]host[:port][/db]`` and ``rediss://...`` (TLS)
- with REDIS_MODE=cluster or sentinel, several nodes: ``h1:p1,h2:p2`` or
  ``rediss://user@h1:p1,h2:p2`` (the Cluster's seed nodes, or the sentinels)

A part given both in the URL and in its own variable (REDIS_DB, REDIS_USERNAME, REDIS_PASSWORD)
must agree: two different databases for one deployment is a mistake that used to split the cache
between clients, so it stops the process instead of picking one.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field, replace
from typing import Literal, TypeVar
from urllib.parse import unquote, urlsplit

from shared.errors import ConfigError
from shared.secret import Secret

DEFAULT_PORT = 6379
T = TypeVar("T")
_NO_PASSWORD = Secret("")
_EXPECTED = "host:port or a redis:// or rediss:// URL"
Mode = Literal["standalone", "cluster", "sentinel"]
MODES: tuple[Mode, ...] = ("standalone", "cluster", "sentinel")


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """One Redis deployment and the credentials, database and TLS to use on it.

    ``mode`` says what ``nodes`` are: the one server (standalone), the Cluster's seed nodes
    (cluster: any reachable one yields the slot map), or the sentinels (sentinel: they name
    the current master of ``sentinel_master``). ``host``/``port`` are the first node.
    """

    host: str = "localhost"
    port: int = DEFAULT_PORT
    db: int = 0
    username: str = ""
    password: Secret = field(default=_NO_PASSWORD)
    tls: bool = False
    ca_file: str = ""  # with tls: the CAs to trust; empty means the system store
    mode: Mode = "standalone"
    nodes: tuple[tuple[str, int], ...] = ()  # empty: ((host, port),)
    sentinel_master: str = ""

    def __post_init__(self) -> None:
        if not self.nodes:
            object.__setattr__(self, "nodes", ((self.host, self.port),))

    @classmethod
    def parse(
        cls,
        addr: str,
        *,
        db: int | None = None,
        username: str = "",
        password: Secret = _NO_PASSWORD,
        ca_file: str = "",
        mode: Mode = "standalone",
        sentinel_master: str = "",
    ) -> RedisSettings:
        """From REDIS_ADDR and REDIS_DB / REDIS_USERNAME / REDIS_PASSWORD / REDIS_TLS_CA_FILE /
        REDIS_MODE / REDIS_SENTINEL_MASTER; raise ``ConfigError`` naming the variable on
        anything unusable."""
        tls, nodes, url_user, url_password, url_db = _split_nodes(addr, mode)
        settings = cls(
            host=nodes[0][0],
            port=nodes[0][1],
            db=_agree("REDIS_DB", url_db, db, 0),
            username=_agree("REDIS_USERNAME", url_user or None, username or None, ""),
            password=Secret(
                _agree("REDIS_PASSWORD", url_password or None, password.get() or None, "", True)
            ),
            tls=tls,
            ca_file=ca_file,
            mode=mode,
            nodes=nodes,
            sentinel_master=sentinel_master,
        )
        if mode == "cluster" and settings.db:
            raise ConfigError(
                f"REDIS_MODE=cluster has only database 0, got database {settings.db} "
                "(REDIS_DB or REDIS_ADDR's /db)"
            )
        if mode == "sentinel" and not sentinel_master:
            raise ConfigError("REDIS_MODE=sentinel needs REDIS_SENTINEL_MASTER (the master's name)")
        if sentinel_master and mode != "sentinel":
            raise ConfigError("REDIS_SENTINEL_MASTER is set but REDIS_MODE is not sentinel")
        if ca_file and not tls:
            raise ConfigError("REDIS_TLS_CA_FILE is set but REDIS_ADDR is not a rediss:// URL")
        if tls:
            try:
                settings.ssl_context()
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"REDIS_TLS_CA_FILE cannot be used ({ca_file!r}: {exc})"
                ) from None
        return settings

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client TLS context: certificate and host name verified against REDIS_TLS_CA_FILE,
        else the system store (which honours SSL_CERT_FILE / SSL_CERT_DIR)."""
        if not self.tls:
            return None
        return ssl.create_default_context(cafile=self.ca_file or None)

    def describe(self) -> str:
        """The address for logs and errors: no password."""
        user = f"{self.username}@" if self.username else ""
        hosts = ",".join(_hostport(host, port) for host, port in self.nodes)
        scheme = "rediss" if self.tls else "redis"
        shown = f"{scheme}://{user}{hosts}/{self.db}"
        if self.mode == "sentinel":
            return f"{shown} (sentinels of {self.sentinel_master})"
        return shown if self.mode == "standalone" else f"{shown} (cluster)"

    def with_node(self, host: str, port: int) -> RedisSettings:
        """The same credentials and TLS on one given server (a Cluster node, the master a
        sentinel named): what a client needs to open a connection there."""
        return replace(self, host=host, port=port, mode="standalone", nodes=((host, port),))


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _split_nodes(
    addr: str, mode: Mode
) -> tuple[bool, tuple[tuple[str, int], ...], str, str, int | None]:
    """(tls, nodes, username, password, db or None) from REDIS_ADDR: one node, or with a
    Cluster or Sentinel mode a comma-separated list sharing one scheme, user and /db."""
    text = addr.strip()
    if "," not in text:
        tls, host, port, user, password, db = _split(text)
        return tls, ((host, port),), user, password, db
    if mode == "standalone":
        raise ConfigError(
            f"REDIS_ADDR must be one {_EXPECTED}; several nodes need REDIS_MODE=cluster or "
            f"sentinel, got {_shown(text)!r}"
        )
    prefix, sep, rest = text.rpartition("://")
    scheme = prefix + sep
    userinfo, at, hosts = rest.rpartition("@")
    hosts, slash, path = hosts.partition("/")
    nodes: list[tuple[str, int]] = []
    first: tuple[bool, str, int, str, str, int | None] | None = None
    for item in hosts.split(","):
        if not item.strip():
            raise ConfigError(f"REDIS_ADDR has an empty node in {_shown(text)!r}")
        one = _split(f"{scheme}{userinfo}{at}{item.strip()}{slash}{path}")
        first = first or one
        nodes.append((one[1], one[2]))
    assert first is not None
    tls, _, _, user, password, db = first
    return tls, tuple(nodes), user, password, db


def _split(addr: str) -> tuple[bool, str, int, str, str, int | None]:
    """(tls, host, port, username, password, db or None) from REDIS_ADDR."""
    text = addr.strip()
    scheme, sep, _ = text.partition("://")
    if sep:
        if scheme.lower() not in ("redis", "rediss"):
            raise ConfigError(f"REDIS_ADDR must be {_EXPECTED}, got {_shown(text)!r}")
        parts = urlsplit(text)
    else:
        if "@" in text or "/" in text:
            raise ConfigError(
                f"REDIS_ADDR must be {_EXPECTED} (credentials and a database need the URL "
                f"form), got {_shown(text)!r}"
            )
        parts = urlsplit("redis://" + text)
    if parts.query or parts.fragment:
        raise ConfigError(
            f"REDIS_ADDR must not carry ?options (use the REDIS_* settings), got {_shown(text)!r}"
        )
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ConfigError(f"REDIS_ADDR has a bad port, got {_shown(text)!r}") from None
    if not parts.hostname:
        raise ConfigError(f"REDIS_ADDR must be {_EXPECTED}, got {_shown(text)!r}")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ConfigError(
            f"REDIS_ADDR's path must be a database number such as /3, got {_shown(text)!r}"
        )
    return (
        parts.scheme.lower() == "rediss",
        parts.hostname,
        port,
        unquote(parts.username or ""),
        unquote(parts.password or ""),
        int(path) if path else None,
    )


def _agree(name: str, in_url: T | None, own: T | None, default: T, secret: bool = False) -> T:
    if in_url is not None and own is not None and in_url != own:
        if secret:
            raise ConfigError(f"{name} and the password in REDIS_ADDR differ: give it once")
        raise ConfigError(f"{name}={own} and REDIS_ADDR's {in_url} differ: give it once")
    if in_url is not None:
        return in_url
    return own if own is not None else default


def _shown(addr: str) -> str:
    """The address as it may be echoed: any password replaced."""
    return re.sub(r"//([^:/@]*):[^@]*@", r"//\1:***@", addr)
