"""The one settings object, parsed once from the environment at start-up."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.errors import ConfigError


class Secret:
    """A string that never shows itself in ``repr``/``str`` (logs, tracebacks)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str, *, bare_unit: str = "s") -> float:
    """Parse ``30m``, ``1h30m``, ``500ms``, ``2d`` (or a bare number in ``bare_unit``) to s."""
    text = text.strip().lower()
    if not text:
        raise ValueError("empty duration")
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if number < 0:
            raise ValueError("negative duration")
        return number * _UNIT_SECONDS[bare_unit]
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            raise ValueError(f"bad duration {text!r}")
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise ValueError(f"bad duration {text!r}")
    return total


# --- parsers: each takes the raw text and returns the value or raises ValueError(expected) ---

Parser = Callable[[str], Any]


def _int(minimum: int = 0) -> Parser:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"an integer >= {minimum}") from None
        if value < minimum:
            raise ValueError(f"an integer >= {minimum}")
        return value

    return parse


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("true or false")


def _str(text: str) -> str:
    return text.strip()


def _secret(text: str) -> Secret:
    return Secret(text.strip())


def _choice(*options: str) -> Parser:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise ValueError("one of " + ", ".join(options))
        return value

    return parse


def _duration(bare_unit: str = "s") -> Parser:
    def parse(text: str) -> float:
        try:
            return parse_duration(text, bare_unit=bare_unit)
        except ValueError:
            raise ValueError(
                f"a duration such as 500ms, 30s, 5m or 1h (a bare number means {bare_unit})"
            ) from None

    return parse


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _methods(text: str) -> tuple[str, ...]:
    methods = tuple(m.upper() for m in _csv(text))
    for method in methods:
        if not method.isalpha():
            raise ValueError("a comma-separated list of HTTP methods")
    return methods


def _path_prefixes(text: str) -> tuple[str, ...]:
    prefixes = _csv(text)
    for prefix in prefixes:
        if not prefix.startswith("/v1/") or ".." in prefix or "//" in prefix:
            raise ValueError("a comma-separated list of paths starting with /v1/")
    return prefixes


def _key_prefix(text: str) -> str:
    value = text.strip()
    if not value or "{" in value or "}" in value or any(c.isspace() for c in value):
        raise ValueError("a non-empty key prefix without spaces, { or }")
    return value


_log_level = _choice("debug", "info", "warning", "error")


def var(env: str, default: Any, doc: str, parse: Parser, *, shown: str | None = None) -> Any:
    """Declare a setting: its variable name, default, operator-facing meaning and parser."""
    meta = {"env": env, "doc": doc, "parse": parse, "shown": shown}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for sequence defaults")
    return field(default=default, metadata=meta)


DEFAULT_ENDPOINTS = (
    "/v1/chat/completions,/v1/completions,/v1/embeddings,/v1/models,/v1/responses,"
    "/v1/moderations,/v1/images,/v1/audio,/v1/files,/v1/batches"
)


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of every llm-proxy process. Build with ``Settings.from_env(environ)``."""

    # --- storage ---
    db_driver: Literal["sqlite", "postgres"] = var(
        "DB_DRIVER",
        "sqlite",
        "Database backend: `sqlite` (embedded default) or `postgres`.",
        _choice("sqlite", "postgres"),
    )
    database_url: str = var(
        "DATABASE_URL",
        "",
        "SQLite file path (or `sqlite:///path`) or a `postgres://` URL. "
        "Empty means `llm-proxy.db` in the working directory.",
        _str,
        shown="`llm-proxy.db`",
    )
    database_pool_size: int = var(
        "DATABASE_POOL_SIZE", 10, "Postgres: maximum open connections per process.", _int(1)
    )
    database_max_idle_conns: int = var(
        "DATABASE_MAX_IDLE_CONNS",
        5,
        "Postgres: connections kept open when idle (the pool's minimum size).",
        _int(0),
    )
    database_conn_max_lifetime: float = var(
        "DATABASE_CONN_MAX_LIFETIME",
        3600.0,
        "Postgres: a connection older than this is replaced (`30m`, `1h`, ...).",
        _duration(),
        shown="`1h`",
    )

    # --- redis ---
    redis_addr: str = var(
        "REDIS_ADDR",
        "localhost:6379",
        "Redis `host:port` (or a `redis://`/`rediss://` URL), used by every Redis-backed feature.",
        _str,
    )
    redis_db: int = var("REDIS_DB", 0, "Redis database number.", _int(0))
    redis_password: Secret = var(
        "REDIS_PASSWORD",
        Secret(""),
        "Redis password (AUTH), if the server needs one.",
        _secret,
        shown="(none)",
    )

    redis_timeout: float = var(
        "REDIS_TIMEOUT",
        1.0,
        "How long a Redis command may take before the caller treats Redis as unavailable "
        "(and falls back, spools or fails closed, as each feature documents).",
        _duration(),
        shown="`1s`",
    )

    # --- response cache ---
    http_cache_enabled: bool = var(
        "HTTP_CACHE_ENABLED",
        True,
        "Cache upstream responses (docs/caching.md says what is cached and for how long).",
        _bool,
    )
    http_cache_backend: str = var(
        "HTTP_CACHE_BACKEND",
        "in-memory",
        "`in-memory` (each worker process keeps its own cache) or `redis` (one cache shared by "
        "every worker and instance).",
        _choice("in-memory", "redis"),
    )
    http_cache_default_ttl: float = var(
        "HTTP_CACHE_DEFAULT_TTL",
        300.0,
        "How long a response is kept when the upstream gives no freshness (Cache-Control "
        "`s-maxage`/`max-age`, `Expires`); a bare number means seconds.",
        _duration(),
        shown="`300` (5 minutes)",
    )
    http_cache_max_object_bytes: int = var(
        "HTTP_CACHE_MAX_OBJECT_BYTES",
        1048576,
        "Largest response body (a captured stream included) the cache stores, in bytes.",
        _int(1),
    )
    cache_max_size: int = var(
        "CACHE_MAX_SIZE",
        10000,
        "In-memory backend: most entries each worker keeps; the least recently used go first.",
        _int(1),
    )
    http_cache_max_bytes: int = var(
        "HTTP_CACHE_MAX_BYTES",
        67108864,
        "In-memory backend: most bytes of responses each worker keeps (64 MiB); the least "
        "recently used go first.",
        _int(1),
    )
    http_cache_single_flight_wait: float = var(
        "HTTP_CACHE_SINGLE_FLIGHT_WAIT",
        10.0,
        "How long identical cache misses in one worker wait for the first one's upstream answer "
        "before going upstream themselves; `0` turns the waiting off.",
        _duration(),
        shown="`10s`",
    )
    redis_cache_key_prefix: str = var(
        "REDIS_CACHE_KEY_PREFIX",
        "llmproxy:cache:",
        "Redis backend: prefix of every cache key (share one Redis between deployments by "
        "giving each its own).",
        _key_prefix,
    )

    # --- event bus ---
    event_bus: str = var(
        "LLM_PROXY_EVENT_BUS",
        "in-memory",
        "Where request events go: `in-memory` (written by the proxy process itself; the "
        "embedded default) or `redis-streams` (XADD to REDIS_STREAM_KEY, written by "
        "`llm-proxy dispatcher`).",
        _choice("in-memory", "redis-streams"),
    )
    observability_buffer_size: int = var(
        "OBSERVABILITY_BUFFER_SIZE",
        1000,
        "Events each worker holds before they are written or sent; past it, events spill or are "
        "dropped and counted.",
        _int(1),
    )

    # --- secrets ---
    management_token: Secret = var(
        "MANAGEMENT_TOKEN",
        Secret(""),
        "Bearer token for the management API under `/manage/`. Unset: that API is disabled.",
        _secret,
        shown="(none)",
    )
    encryption_key: Secret = var(
        "ENCRYPTION_KEY",
        Secret(""),
        "32 random bytes, URL-safe base64 (`llm-proxy manage keys new`), encrypting upstream API "
        "keys at rest. Required on Postgres; on SQLite a key file is generated when unset.",
        _secret,
        shown="(generated on SQLite)",
    )
    encryption_old_keys: Secret = var(
        "ENCRYPTION_OLD_KEYS",
        Secret(""),
        "Comma-separated previous encryption keys, for reading values written before a rotation "
        "(`llm-proxy manage keys rotate`).",
        _secret,
        shown="(none)",
    )
    encryption_key_file: str = var(
        "ENCRYPTION_KEY_FILE",
        "",
        "Where the generated key lives on the embedded default. Empty means the SQLite file's "
        "path plus `.key`.",
        _str,
        shown="`llm-proxy.db.key`",
    )

    # --- logging ---
    log_level: str = var("LOG_LEVEL", "info", "`debug`, `info`, `warning` or `error`.", _log_level)
    log_format: str = var(
        "LOG_FORMAT", "json", "`json` (one object per line) or `text`.", _choice("json", "text")
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Parse every variable; raise ``ConfigError`` naming the first bad one."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f.metadata["env"]
            raw = env.get(name)
            if raw is None or (raw.strip() == "" and not isinstance(f.default, (str, Secret))):
                continue
            try:
                values[f.name] = f.metadata["parse"](raw)
            except ValueError as exc:
                shown = "(hidden)" if isinstance(f.default, Secret) else repr(raw)
                raise ConfigError(f"{name} must be {exc}, got {shown}") from None
        settings = cls(**values)
        settings._check()
        return settings

    def _check(self) -> None:
        url = self.database_url
        if self.db_driver == "postgres":
            if not url.startswith(("postgres://", "postgresql://")):
                raise ConfigError(
                    "DATABASE_URL must be a postgres:// URL when DB_DRIVER=postgres, "
                    f"got {_redact_url(url)!r}"
                )
        elif url.startswith(("postgres://", "postgresql://")):
            raise ConfigError("DB_DRIVER must be postgres when DATABASE_URL is a postgres:// URL")

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def sqlite_path(self) -> str:
        url = self.database_url or "llm-proxy.db"
        if url.startswith("sqlite:///"):
            return url[len("sqlite:///") :]
        if url.startswith("sqlite://"):
            return url[len("sqlite://") :]
        return url


def _redact_url(url: str) -> str:
    return re.sub(r"//([^:/@]*):[^@]*@", r"//\1:***@", url)


def documented_variables() -> dict[str, tuple[str, str]]:
    """``{ENV_NAME: (default as shown, meaning)}`` for every setting, in declaration order."""
    out: dict[str, tuple[str, str]] = {}
    for f in dataclasses.fields(Settings):
        meta = f.metadata
        shown = meta["shown"]
        if shown is None:
            default = f.default
            if isinstance(default, bool):
                shown = f"`{str(default).lower()}`"
            elif isinstance(default, tuple):
                shown = f"`{','.join(default)}`" if default else "(empty)"
            elif default == "":
                shown = "(empty)"
            else:
                shown = f"`{default}`"
        out[meta["env"]] = (shown, meta["doc"])
    return out


def markdown_table() -> str:
    """The settings table of docs/configuration.md, generated from the declarations above."""
    lines = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for name, (default, doc) in documented_variables().items():
        lines.append(f"| `{name}` | {default} | {doc} |")
    return "\n".join(lines)


def write_docs(path: str) -> None:
    """Replace the generated table in docs/configuration.md."""
    begin, end = "<!-- settings:begin -->\n", "<!-- settings:end -->"
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(head + begin + markdown_table() + "\n" + end + tail)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--write"]:
        write_docs(sys.argv[2] if len(sys.argv) > 2 else "docs/configuration.md")
    else:
        print(markdown_table())
