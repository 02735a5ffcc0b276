"""Where Redis is and how to talk to it: REDIS_ADDR and its companions, parsed once.

Every Redis client of every process (redis-py, the dramatiq broker, the proxy's lean client) is
built from one ``RedisSettings``; none reads the address text again. Accepted addresses:

- ``host``, ``host:port``, ``[::1]:port``
- ``redis://[[user]:password@]host[:port][/db]`` and ``rediss://...`` (TLS)

A part given both in the URL and in its own variable (REDIS_DB, REDIS_USERNAME, REDIS_PASSWORD)
must agree: two different databases for one deployment is a mistake that used to split the cache
between clients, so it stops the process instead of picking one.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from shared.errors import ConfigError
from shared.secret import Secret

DEFAULT_PORT = 6379
T = TypeVar("T")
_NO_PASSWORD = Secret("")
_EXPECTED = "host:port or a redis:// or rediss:// URL"


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """One Redis server and the credentials, database and TLS to use on it.

    Room to grow: Sentinel or Cluster would add a mode and a tuple of seed nodes beside
    ``host``/``port``; every client already takes the whole value, not an address string.
    """

    host: str = "localhost"
    port: int = DEFAULT_PORT
    db: int = 0
    username: str = ""
    password: Secret = field(default=_NO_PASSWORD)
    tls: bool = False
    ca_file: str = ""  # with tls: the CAs to trust; empty means the system store

    @classmethod
    def parse(
        cls,
        addr: str,
        *,
        db: int | None = None,
        username: str = "",
        password: Secret = _NO_PASSWORD,
        ca_file: str = "",
    ) -> RedisSettings:
        """From REDIS_ADDR and REDIS_DB / REDIS_USERNAME / REDIS_PASSWORD / REDIS_TLS_CA_FILE;
        raise ``ConfigError`` naming the variable on anything unusable."""
        tls, host, port, url_user, url_password, url_db = _split(addr)
        settings = cls(
            host=host,
            port=port,
            db=_agree("REDIS_DB", url_db, db, 0),
            username=_agree("REDIS_USERNAME", url_user or None, username or None, ""),
            password=Secret(
                _agree("REDIS_PASSWORD", url_password or None, password.get() or None, "", True)
            ),
            tls=tls,
            ca_file=ca_file,
        )
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
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss' if self.tls else 'redis'}://{user}{host}:{self.port}/{self.db}"


def _split(addr: str) -> tuple[bool, str, int, str, str, int | None]:
    """(tls, host, port, username, password, db or None) from REDIS_ADDR."""
    text = addr.strip()
    if "," in text:
        raise ConfigError(
            f"REDIS_ADDR must be one {_EXPECTED} (several seed nodes need a Cluster or Sentinel "
            f"mode, not supported yet), got {_shown(text)!r}"
        )
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
