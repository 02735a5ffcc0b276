"""The one settings object, parsed once from the environment at start-up."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast
from urllib.parse import unquote, urlsplit

from shared.errors import ConfigError
from shared.parsing import boolean, integer
from shared.profiles import PROFILE_ENV, profile_names, profiles_table, resolve, seed_table
from shared.redis_settings import Mode, RedisSettings
from shared.secret import Secret

__all__ = ["ConfigError", "RedisSettings", "Secret", "Settings"]


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


_int = integer
_bool = boolean


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


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_SIZE = re.compile(r"(\d+)\s*([a-z]*)")


def _size(text: str) -> int:
    """A byte count: ``134217728``, ``128MiB``, ``512KiB``, ``1GB`` (KB, MB, GB: powers of 1000)."""
    match = _SIZE.fullmatch(text.strip().lower())
    if match is None or match.group(2) not in _SIZE_UNITS:
        raise ValueError("a size in bytes such as 134217728, 512KiB, 128MiB or 1GiB")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def _ratio(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError("a number from 0 to 1") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError("a number from 0 to 1")
    return value


def _size_at_least(minimum: int) -> Parser:
    def parse(text: str) -> int:
        value = _size(text)
        if value < minimum:
            raise ValueError(f"a size of at least {minimum} bytes, such as 64KiB")
        return value

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


def _cidrs(text: str) -> tuple[str, ...]:
    entries = _csv(text)
    for entry in entries:
        if entry.lower() == "unix":
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(
                f"a comma-separated list of CIDRs or addresses ({entry!r} is neither)"
            ) from None
    return entries


def _key_prefix(text: str) -> str:
    value = text.strip()
    if not value or "{" in value or "}" in value or any(c.isspace() for c in value):
        raise ValueError("a non-empty key prefix without spaces, { or }")
    return value


_log_level = _choice("debug", "info", "warning", "error")


def _name(text: str) -> str:
    value = text.strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError("a non-empty name without spaces")
    return value


def _listen_addr(text: str) -> str:
    value = text.strip()
    if value.lower() == "off":
        return "off"
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("host:port (such as 0.0.0.0:8081) or off")
    return f"{host or '0.0.0.0'}:{int(port)}"  # noqa: S104 - a metrics port; operators choose


def _management_listen(text: str) -> str:
    value = text.strip()
    if not value:
        return ""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("host:port (such as 127.0.0.1:8081), or empty")
    return f"{host or '0.0.0.0'}:{int(port)}"  # noqa: S104 - the operator chose every interface


def _webhook_url(text: str) -> str:
    value = text.strip()
    if value and not value.startswith(("http://", "https://")):
        raise ValueError("an http:// or https:// URL")
    return value


@dataclass(frozen=True, slots=True)
class ProxyUrl:
    """An egress proxy (HTTP_PROXY, HTTPS_PROXY), parsed once; the password never shows."""

    host: str
    port: int
    username: str = ""
    password: Secret = Secret("")

    @classmethod
    def parse(cls, text: str) -> ProxyUrl:
        """``http://[user:password@]host[:port]`` (the scheme may be left out; port 80)."""
        value = text.strip()
        try:
            parts = urlsplit(value if "://" in value else "http://" + value)
            port = parts.port or 80
        except ValueError:
            raise ValueError("an http://host:port proxy URL") from None
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("an http://host:port proxy URL")
        return cls(
            parts.hostname,
            port,
            unquote(parts.username or ""),
            Secret(unquote(parts.password or "")),
        )


def _proxy_url(text: str) -> ProxyUrl | None:
    return ProxyUrl.parse(text) if text.strip() else None


def var(env: str, default: Any, doc: str, parse: Parser, *, shown: str | None = None) -> Any:
    """Declare a setting: its variable name, default, operator-facing meaning and parser."""
    meta = {"env": env, "doc": doc, "parse": parse, "shown": shown}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for sequence defaults")
    return field(default=default, metadata=meta)


DEFAULT_ENDPOINTS = (
    "/v1/chat/completions,/v1/completions,/v1/embeddings,/v1/models,/v1/responses,"
    "/v1/moderations,/v1/images,/v1/audio,/v1/files,/v1/batches,/v1/messages"
)


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of every llm-proxy process. Build with ``Settings.from_env(environ)``."""

    # --- profile ---
    profile: tuple[str, ...] = var(
        PROFILE_ENV,
        (),
        "Tuning presets applied before the other variables, which override them: "
        "`low-latency`, `high-throughput`, `development`, `edge` (the use cases of the tuning "
        "guide) and `strict` (100 requests a minute overall, 30 per client address); several "
        "may be named, comma-separated, later ones winning. The presets are listed in "
        "docs/configuration.md.",
        profile_names,
    )
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
    database_read_url: str = var(
        "DATABASE_READ_URL",
        "",
        "Postgres: a read-only replica (a hot standby) for the management reads that tolerate "
        "its lag: usage reports (`manage usage`, `GET /v1/usage`), request event pages and "
        "tails, the audit log, event stats and unpriced models. Everything that must see its "
        "own writes (auth, budgets, `show` after a change, `apply`'s plan) and every write "
        "stays on DATABASE_URL. Empty: everything on DATABASE_URL. See docs/scaling.md.",
        _str,
        shown="(none)",
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

    database_connect_timeout: float = var(
        "DATABASE_CONNECT_TIMEOUT",
        10.0,
        "Postgres: give up opening a connection after this long (a server that accepts but "
        "never answers).",
        _duration(),
        shown="`10s`",
    )
    database_tcp_user_timeout: float = var(
        "DATABASE_TCP_USER_TIMEOUT",
        30.0,
        "Postgres: the kernel drops a connection whose sent data stays unacknowledged this long "
        "(TCP_USER_TIMEOUT; TCP keepalives probe idle connections every 10s after 30s). Finds "
        "flows a NAT or load balancer dropped silently. 0 leaves the OS default.",
        _duration(),
        shown="`30s`",
    )

    # --- redis ---
    redis_addr: str = var(
        "REDIS_ADDR",
        "localhost:6379",
        "Where Redis is, for every Redis-backed feature: `host:port`, or a URL "
        "`redis://[user:password@]host:port/db` (`rediss://` for TLS). See 'Redis addresses' "
        "below.",
        _str,
    )
    redis_db: int | None = var(
        "REDIS_DB",
        None,
        "Redis database number. A database in REDIS_ADDR's path counts the same; giving both "
        "with different numbers stops the process.",
        _int(0),
        shown="`0`",
    )
    redis_username: str = var(
        "REDIS_USERNAME",
        "",
        "Redis ACL user (`AUTH user password`); empty: the default user. May be given in "
        "REDIS_ADDR instead.",
        _str,
        shown="(default user)",
    )
    redis_password: Secret = var(
        "REDIS_PASSWORD",
        Secret(""),
        "Redis password (AUTH), if the server needs one. May be given in REDIS_ADDR instead.",
        _secret,
        shown="(none)",
    )
    redis_tls_ca_file: str = var(
        "REDIS_TLS_CA_FILE",
        "",
        "With a `rediss://` REDIS_ADDR: PEM file of the certificate authorities trusted for "
        "Redis. Empty: the system's trust store (which honours SSL_CERT_FILE).",
        _str,
        shown="(system store)",
    )
    redis_mode: str = var(
        "REDIS_MODE",
        "standalone",
        "`standalone` (one server), `cluster` (Redis Cluster: REDIS_ADDR lists seed nodes "
        "`host:port,host:port`) or `sentinel` (REDIS_ADDR lists the sentinels, "
        "REDIS_SENTINEL_MASTER names the master). See 'Redis addresses' below.",
        _choice("standalone", "cluster", "sentinel"),
    )
    redis_sentinel_master: str = var(
        "REDIS_SENTINEL_MASTER",
        "",
        "With REDIS_MODE=sentinel: the name the sentinels monitor the master under.",
        _str,
        shown="(none)",
    )
    #: REDIS_ADDR and its companions above, parsed once; every Redis client is built from it.
    redis: RedisSettings = field(init=False, repr=False, compare=False, metadata={})

    redis_timeout: float = var(
        "REDIS_TIMEOUT",
        1.0,
        "How long a Redis command may take before the caller treats Redis as unavailable "
        "(and falls back, spools or fails closed, as each feature documents).",
        _duration(),
        shown="`1s`",
    )

    # --- server ---
    host: str = var("HOST", "0.0.0.0", "Address `llm-proxy server` listens on.", _str)  # noqa: S104
    port: int = var("PORT", 8080, "Port `llm-proxy server` listens on.", _int(1))
    management_listen: str = var(
        "MANAGEMENT_LISTEN",
        "",
        "`host:port` where `llm-proxy server` serves the management API (`/manage/`), on a "
        "listener of its own: `HOST:PORT` then answers `/v1/`, `/health`, `/ready` and "
        "`/metrics` only. Empty: `/manage/` is served on `PORT` too.",
        _management_listen,
        shown="(empty: on PORT)",
    )
    workers: int = var(
        "WORKERS",
        0,
        "Worker processes of `llm-proxy server`. 0 means one per CPU core.",
        _int(0),
        shown="`0` (CPU count)",
    )
    shutdown_grace_period: float = var(
        "SHUTDOWN_GRACE_PERIOD",
        120.0,
        "On SIGTERM, how long in-flight requests (open streams included) may take to finish; "
        "then they are cut (recorded as `interrupted`) and the worker stops.",
        _duration(),
        shown="`120s`",
    )
    max_in_flight_requests: int = var(
        "MAX_IN_FLIGHT_REQUESTS",
        2000,
        "Requests one worker serves at once; more get 503 with Retry-After. 0 means no cap.",
        _int(0),
    )

    # --- forwarding ---
    allowed_endpoints: tuple[str, ...] = var(
        "ALLOWED_ENDPOINTS",
        tuple(DEFAULT_ENDPOINTS.split(",")),
        "Comma-separated path prefixes under `/v1/` that are forwarded; anything else is 404.",
        _path_prefixes,
    )
    allowed_methods: tuple[str, ...] = var(
        "ALLOWED_METHODS",
        ("GET", "HEAD", "POST", "DELETE"),
        "Comma-separated HTTP methods forwarded; anything else is 405 (CORS preflight `OPTIONS` "
        "is answered by the proxy itself when CORS_ALLOWED_ORIGINS is set).",
        _methods,
    )
    azure_openai_api_version: str = var(
        "AZURE_OPENAI_API_VERSION",
        "2024-10-21",
        "The `api-version` sent to `azure-openai` projects when neither the project (or "
        "upstream, `--api-version`) nor the client names one (docs/providers.md).",
        str,
    )
    forward_openai_org_headers: bool = var(
        "FORWARD_OPENAI_ORG_HEADERS",
        False,
        "Forward the client's `OpenAI-Organization` and `OpenAI-Project` headers upstream. Off: "
        "the project's key alone decides.",
        _bool,
    )
    cors_allowed_origins: tuple[str, ...] = var(
        "CORS_ALLOWED_ORIGINS",
        (),
        "Comma-separated origins allowed to call `/v1/` from a browser (`*` for any). "
        "Empty: CORS off.",
        _csv,
    )
    max_request_body_bytes: int = var(
        "MAX_REQUEST_BODY_BYTES",
        64 * 1024 * 1024,
        "Largest request body accepted (chunked bodies included); larger gets 413. Bodies of "
        "chat/completions, completions and responses are held in memory up to this size.",
        _int(1),
    )
    max_request_header_bytes: int = var(
        "MAX_REQUEST_HEADER_BYTES",
        32768,
        "Largest request head (request line and headers) the proxy port reads; larger gets 431 "
        "and the connection is closed.",
        _int(1024),
    )
    max_request_headers: int = var(
        "MAX_REQUEST_HEADERS",
        100,
        "Most request headers accepted; more gets 431.",
        _int(1),
    )
    request_header_timeout: float = var(
        "REQUEST_HEADER_TIMEOUT",
        10.0,
        "A connection must deliver a complete request head within this time of connecting (or "
        "of starting the request); else it gets 408 and is closed (slowloris). 0 disables.",
        _duration(),
        shown="`10s`",
    )
    stream_include_usage: bool = var(
        "STREAM_INCLUDE_USAGE",
        True,
        "Set `stream_options.include_usage` on streaming chat/completions requests that lack it "
        "or turn it off, so usage is recorded; the extra usage chunk is removed from what the "
        "client sees.",
        _bool,
    )
    budget_default_max_tokens: int = var(
        "BUDGET_DEFAULT_MAX_TOKENS",
        16384,
        "Completion tokens a budget reserves for a request that sets no `max_tokens` / "
        "`max_completion_tokens` / `max_output_tokens` (settled to the actual use after).",
        _int(1),
    )
    stream_response_chunk_size: int = var(
        "STREAM_RESPONSE_CHUNK_SIZE",
        32768,
        "Largest piece read from the upstream and written to the client at once (bytes), also "
        "while the usage chunk is being removed from a stream.",
        _int(1024),
    )
    batching_enabled: bool = var(
        "BATCHING_ENABLED",
        False,
        "Merge concurrent embeddings requests with the same project, model and parameters into "
        'one upstream call and split the answer back (docs/configuration.md, "Request '
        'batching").',
        _bool,
    )
    batch_window_ms: int = var(
        "BATCH_WINDOW_MS",
        50,
        "How long the first request of a batch waits for others to join it (ms).",
        _int(1),
    )
    batch_max_size: int = var(
        "BATCH_MAX_SIZE",
        10,
        "Most requests merged into one upstream call; a full batch goes at once.",
        _int(1),
    )
    batch_max_queue_size: int = var(
        "BATCH_MAX_QUEUE_SIZE",
        1000,
        "Most requests waiting in open batches per worker; beyond it a request goes upstream "
        "alone at once.",
        _int(1),
    )
    profiling_enabled: bool = var(
        "PROFILING_ENABLED",
        False,
        "Time each phase of every request (histograms by phase) and keep the slowest requests "
        'with their phases for `GET /manage/profiling` (docs/operations.md, "Profiling").',
        _bool,
    )
    profiling_keep: int = var(
        "PROFILING_KEEP",
        100,
        "With PROFILING_ENABLED: how many of the slowest requests each worker keeps.",
        _int(1),
    )
    upstream_connect_timeout: float = var(
        "UPSTREAM_CONNECT_TIMEOUT",
        10.0,
        "Connecting to the upstream (TCP and TLS); on expiry 504.",
        _duration(),
        shown="`10s`",
    )
    upstream_read_timeout: float = var(
        "UPSTREAM_READ_TIMEOUT",
        300.0,
        "Longest silence allowed between bytes from the upstream (a stream may be slow between "
        "tokens); on expiry 504, or the stream is cut.",
        _duration(),
        shown="`300s`",
    )
    upstream_timeout: float = var(
        "UPSTREAM_TIMEOUT",
        900.0,
        "Longest a whole upstream exchange may take. 0 means no limit.",
        _duration(),
        shown="`900s`",
    )
    upstream_attempts: int = var(
        "UPSTREAM_ATTEMPTS",
        3,
        "Most upstream calls for one request of a project with several upstreams, retries and "
        "fallbacks included; only made while nothing has reached the client "
        "(docs/providers.md).",
        _int(1),
    )
    upstream_retry_budget: float = var(
        "UPSTREAM_RETRY_BUDGET",
        30.0,
        "No further upstream is tried once a request has spent this long on failed attempts.",
        _duration(),
        shown="`30s`",
    )
    breaker_failures: int = var(
        "BREAKER_FAILURES",
        5,
        "Failures (connect errors, timeouts, 429/5xx) within BREAKER_WINDOW that open an "
        "upstream's circuit breaker.",
        _int(1),
    )
    breaker_window: float = var(
        "BREAKER_WINDOW",
        30.0,
        "The window BREAKER_FAILURES are counted in.",
        _duration(),
        shown="`30s`",
    )
    breaker_cooldown: float = var(
        "BREAKER_COOLDOWN",
        30.0,
        "How long an open breaker keeps its upstream out before one probe request (half-open); "
        "a longer Retry-After from the upstream wins.",
        _duration(),
        shown="`30s`",
    )
    breaker_key_prefix: str = var(
        "BREAKER_KEY_PREFIX",
        "llm-proxy:breaker:",
        "Prefix of the Redis keys holding upstream circuit-breaker state (shared by every worker "
        "and instance when Redis is in use; without Redis each worker keeps its own).",
        _key_prefix,
    )
    upstream_affinity: str = var(
        "UPSTREAM_AFFINITY",
        "off",
        "Which upstream of a project serves a request: `off` (by weight, at random), `token` "
        "(the same client token keeps the same upstream) or `header` (the same "
        "`X-Affinity-Key` value does), so one conversation keeps an upstream's prompt cache.",
        _choice("off", "token", "header"),
    )
    pool_min_connections: int = var(
        "POOL_MIN_CONNECTIONS",
        2,
        "Upstream connections per worker and upstream host kept open when idle (with POOL_WARM, "
        "opened at start).",
        _int(0),
    )
    pool_max_connections: int = var(
        "POOL_MAX_CONNECTIONS",
        100,
        "Most upstream connections per worker; requests beyond wait up to POOL_ACQUIRE_TIMEOUT.",
        _int(1),
    )
    pool_warm: bool = var(
        "POOL_WARM",
        False,
        "Open POOL_MIN_CONNECTIONS connections to every active project's upstream at start.",
        _bool,
    )
    pool_acquire_timeout: float = var(
        "POOL_ACQUIRE_TIMEOUT",
        5.0,
        "How long a request waits for a free upstream connection (a bare number means "
        "milliseconds, as in the operator guide); on expiry 503.",
        _duration("ms"),
        shown="`5000` (ms)",
    )
    upstream_ca_file: str = var(
        "UPSTREAM_CA_FILE",
        "",
        "PEM file of the certificate authorities trusted for https upstreams (an internal CA). "
        "Empty: the system's trust store.",
        _str,
    )
    disable_connection_pool: bool = var(
        "DISABLE_CONNECTION_POOL",
        False,
        "Open a new upstream connection for every request (debugging only).",
        _bool,
    )
    upstream_max_header_bytes: int = var(
        "UPSTREAM_MAX_HEADER_BYTES",
        65536,
        "Largest upstream response head (status line and headers) accepted; a larger one is "
        "answered 502 and its connection closed.",
        _size_at_least(1024),
        shown="`64KiB`",
    )
    upstream_max_headers: int = var(
        "UPSTREAM_MAX_HEADERS",
        100,
        "Most headers accepted in one upstream response; more is answered 502 and its "
        "connection closed.",
        _int(1),
    )
    upstream_connection_max_age: float = var(
        "UPSTREAM_CONNECTION_MAX_AGE",
        300.0,
        "An upstream connection older than this is not reused, so a new one resolves the "
        "upstream's DNS name again (a moved endpoint is followed). 0 means no limit.",
        _duration(),
        shown="`300s`",
    )
    upstream_client_cert_file: str = var(
        "UPSTREAM_CLIENT_CERT_FILE",
        "",
        "PEM client certificate (chain) presented to https upstreams that require mutual TLS; "
        "it may hold the private key too. Empty: none.",
        _str,
    )
    upstream_client_key_file: str = var(
        "UPSTREAM_CLIENT_KEY_FILE",
        "",
        "PEM private key of UPSTREAM_CLIENT_CERT_FILE, when it is kept in its own file.",
        _str,
    )
    http_proxy: ProxyUrl | None = var(
        "HTTP_PROXY",
        None,
        "Egress proxy (`http://[user:password@]host:port`) for http:// upstreams, sent requests "
        "in absolute form. Only the upper-case name is read (docs/operations.md).",
        _proxy_url,
        shown="(empty)",
    )
    https_proxy: ProxyUrl | None = var(
        "HTTPS_PROXY",
        None,
        "Egress proxy (`http://[user:password@]host:port`) for https:// upstreams, reached "
        "through a CONNECT tunnel; TLS is end to end with the upstream.",
        _proxy_url,
        shown="(empty)",
    )
    no_proxy: str = var(
        "NO_PROXY",
        "",
        "Upstream hosts that bypass the egress proxy: comma-separated names (subdomains match), "
        "IPs, CIDRs, optional `:port`, or `*`. Nothing else bypasses it, not even loopback.",
        _str,
    )

    # --- auth ---
    apikey_cache_size: int = var(
        "APIKEY_CACHE_SIZE",
        1000,
        "Tokens each worker keeps in its lookup cache (LRU). 0 disables the cache.",
        _int(0),
    )
    apikey_cache_ttl_ms: int = var(
        "APIKEY_CACHE_TTL_MS",
        300000,
        "How long a cached token lookup is trusted (ms). Revocation reaches every worker within "
        "about a second regardless; this is only the backstop.",
        _int(0),
    )
    apikey_cache_outage_ttl_ms: int = var(
        "APIKEY_CACHE_OUTAGE_TTL_MS",
        900000,
        "While the database cannot be reached, a cached token lookup keeps being used until it "
        "is this old (ms, counted from when the database last confirmed it); then requests "
        "with that token get 503. Revocations still arrive over Redis pub/sub meanwhile. "
        "A value below APIKEY_CACHE_TTL_MS means APIKEY_CACHE_TTL_MS (fail closed at once). "
        "See docs/operations.md.",
        _int(0),
    )
    invalidation_poll_interval: float = var(
        "INVALIDATION_POLL_INTERVAL",
        1.0,
        "How often each worker checks the database for revoked tokens and changed projects "
        "(Redis pub/sub delivers them at once when Redis is in use).",
        _duration(),
        shown="`1s`",
    )

    # --- metrics ---
    enable_metrics: bool = var(
        "ENABLE_METRICS", True, "Serve Prometheus metrics at METRICS_PATH.", _bool
    )
    metrics_path: str = var("METRICS_PATH", "/metrics", "Path of the Prometheus endpoint.", _str)
    metrics_aggregation_interval_ms: int = var(
        "METRICS_AGGREGATION_INTERVAL_MS",
        1000,
        "How often each worker sums its figures for the console's live overview (ms); one point "
        "of its charts. Lower: finer charts, more work (a Redis write per worker and interval "
        "when Redis is in use).",
        _int(100),
    )
    metrics_retention_ms: int = var(
        "METRICS_RETENTION_MS",
        60000,
        "How much history of the live figures the console keeps and charts (ms); held in Redis "
        "when Redis is in use, else in each worker's memory.",
        _int(1000),
    )
    prometheus_multiproc_dir: str = var(
        "PROMETHEUS_MULTIPROC_DIR",
        "",
        "Directory where every worker of `llm-proxy server` keeps its metrics (emptied at start). "
        "Empty: a fresh temporary directory.",
        _str,
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
        "`s-maxage`/`max-age`, `Expires`) and it may be stored unasked (`/v1/models`, or an "
        "upstream `Cache-Control: public`; docs/caching.md); a bare number means seconds.",
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
    event_bus_failure_mode: str = var(
        "EVENT_BUS_FAILURE_MODE",
        "spool",
        "What the proxy does when a request's events could not be kept (Redis, or for the "
        "in-memory bus the database, unavailable and the spool full): `spool` serves the "
        "request anyway and counts the lost event; `reject` answers 503 before calling the "
        "upstream, so no spend goes unrecorded.",
        _choice("spool", "reject"),
    )
    event_spool_dir: str = var(
        "EVENT_SPOOL_DIR",
        "",
        "Directory for the event bus's local spool (events kept on disk while Redis, or with the "
        "in-memory bus the database, cannot take them; replayed in order when it can). Each "
        "worker writes its own files; files left by a dead worker are replayed by a live one. "
        "Use a persistent local disk. The in-memory bus on SQLite defaults to `<database "
        "file>-spool`.",
        _str,
        shown="`$TMPDIR/llm-proxy-spool`",
    )
    event_spool_max_bytes: int = var(
        "EVENT_SPOOL_MAX_BYTES",
        128 * 1024**2,
        "Cap on each worker's spool (`134217728`, `512MiB`, `1GB`); past it, events are dropped, "
        "counted and logged (but those of requests already admitted under "
        "`EVENT_BUS_FAILURE_MODE=reject`, which are always written).",
        _size,
        shown="`128MiB`",
    )
    accepted_record_after_ms: int = var(
        "ACCEPTED_RECORD_AFTER_MS",
        500,
        "A forwarded request's accepted record is written to the worker's local journal "
        "(EVENT_JOURNAL_DIR) before the upstream call, and sent to the bus (Redis, or the "
        "database) only if the request is still running after this long (ms). A live worker "
        "publishes a dead one's journal (SIGKILL, OOM); requests younger than this are lost "
        "with the journal itself (node loss; a container restart unless EVENT_JOURNAL_DIR is "
        "on a volume). 0 sends every accepted record to the bus, and waits for it, before the "
        "upstream call, as EVENT_BUS_FAILURE_MODE=reject always does. See docs/operations.md.",
        _int(0),
    )
    event_journal_dir: str = var(
        "EVENT_JOURNAL_DIR",
        "",
        "Directory of the workers' accepted journals. Default: a private directory per spool "
        "directory under `/dev/shm` (memory: the write before each upstream call costs no disk "
        "I/O), or `journal/` in the spool directory where /dev/shm cannot be used. Put it on a "
        "volume that outlives the container to keep it through container restarts (each "
        "request then writes to that disk twice).",
        _str,
        shown="under `/dev/shm/llm-proxy-journal-<uid>`",
    )
    redis_stream_key: str = var(
        "REDIS_STREAM_KEY",
        "llm-proxy-events",
        "The Redis stream the proxy appends events to and dispatchers read. Helper keys are "
        "named `{<key>}:...` so they share its Redis Cluster hash slot.",
        _name,
    )
    redis_stream_shards: int = var(
        "REDIS_STREAM_SHARDS",
        1,
        "Streams the events are spread over (by event id), so the event load spreads over "
        "Redis Cluster shards. 1: the one stream REDIS_STREAM_KEY; N: that key and `{<key>:1}` "
        "... `{<key>:N-1}` (each its own hash slot), every dispatcher reading all of them. "
        "Only raise it (see docs/scaling.md).",
        _int(1),
    )
    redis_wait_replicas: int = var(
        "REDIS_WAIT_REPLICAS",
        0,
        "The proxy's event bus sends `WAIT n` after each XADD batch (in the same pipeline) and "
        "counts a batch as sent only once n replicas of its master hold it; otherwise it is "
        "spooled and sent again. Closes the window in which a master killed right after "
        "acknowledging loses events on failover (Cluster, Sentinel). 0: off. See "
        "docs/scaling.md for the cost.",
        _int(0),
    )
    redis_wait_timeout: float = var(
        "REDIS_WAIT_TIMEOUT",
        0.2,
        "With REDIS_WAIT_REPLICAS: how long WAIT may block for the replicas (less than "
        "REDIS_TIMEOUT); a batch not acknowledged by then is spooled and retried.",
        _duration(),
        shown="`200ms`",
    )
    redis_consumer_group: str = var(
        "REDIS_CONSUMER_GROUP",
        "llm-proxy-dispatchers",
        "The consumer group dispatchers share (`llm-proxy dispatcher --group`).",
        _name,
    )
    dispatcher_batch_size: int = var(
        "DISPATCHER_BATCH_SIZE",
        100,
        "Events a dispatcher writes per transaction (`--batch-size`).",
        _int(1),
    )
    dispatcher_buffer: int = var(
        "DISPATCHER_BUFFER",
        2000,
        "Entries a dispatcher reads ahead of the batch it is writing (`--buffer`).",
        _int(1),
    )
    dispatcher_consumer_name: str = var(
        "DISPATCHER_CONSUMER_NAME",
        "",
        "This dispatcher's consumer name in the group (`--consumer-name`); must be unique per "
        "process. Empty means host name and process id.",
        _str,
        shown="host-pid",
    )
    dispatcher_block_ms: int = var(
        "DISPATCHER_BLOCK_MS",
        1000,
        "How long one XREADGROUP waits for new entries, in milliseconds (`--block-ms`).",
        _int(1),
    )
    dispatcher_claim_idle: float = var(
        "DISPATCHER_CLAIM_IDLE",
        30.0,
        "Entries another consumer has held unacknowledged this long are claimed (XAUTOCLAIM) "
        "(`--claim-idle`).",
        _duration(),
        shown="`30s`",
    )
    dispatcher_max_deliveries: int = var(
        "DISPATCHER_MAX_DELIVERIES",
        5,
        "An entry delivered more often than this without being acknowledged goes to the "
        "dead-letter table (`--max-deliveries`).",
        _int(1),
    )
    dispatcher_write_timeout: float = var(
        "DISPATCHER_WRITE_TIMEOUT",
        30.0,
        "Deadline of one batch write (its whole transaction), also set as the dispatcher's "
        "`statement_timeout`. A write past it counts as a failure and is retried.",
        _duration(),
        shown="`30s`",
    )
    dispatcher_release_after: float = var(
        "DISPATCHER_RELEASE_AFTER",
        60.0,
        "A dispatcher that could not write for this long releases the entries it holds, so a "
        "healthy peer claims them (after DISPATCHER_CLAIM_IDLE), and reads nothing more until "
        "the database answers again.",
        _duration(),
        shown="`60s`",
    )
    dispatcher_http_addr: str = var(
        "DISPATCHER_HTTP_ADDR",
        "0.0.0.0:8081",
        "`host:port` where the dispatcher serves `/metrics`, `/health` and `/ready`; `off` "
        "disables it.",
        _listen_addr,
    )
    usage_stats_buffer_size: int | None = var(
        "USAGE_STATS_BUFFER_SIZE",
        None,
        "Accepted for compatibility; falls back to CACHE_STATS_BUFFER_SIZE. Usage and cache-hit "
        "counts are written with the request events (same transaction), so there is no separate "
        "stats buffer to size: tune OBSERVABILITY_BUFFER_SIZE and the dispatcher instead.",
        _int(1),
        shown="CACHE_STATS_BUFFER_SIZE",
    )
    cache_stats_buffer_size: int = var(
        "CACHE_STATS_BUFFER_SIZE",
        1000,
        "Accepted for compatibility; see USAGE_STATS_BUFFER_SIZE.",
        _int(1),
    )
    request_event_retention_days: int = var(
        "REQUEST_EVENT_RETENTION_DAYS",
        0,
        "Request events older than this many days are deleted by an hourly job run by "
        "`llm-proxy worker`; `0` keeps them forever. On Postgres whole partitions are "
        "dropped, so a row goes once its partition (REQUEST_EVENT_PARTITION_SPAN) is wholly "
        "older: up to one span later.",
        _int(0),
    )
    request_event_partition_span: str = var(
        "REQUEST_EVENT_PARTITION_SPAN",
        "day",
        "Postgres: the time range of one `request_events` partition, `day`, `week` (from "
        "Monday) or `month`, in UTC. Keeping events for long (or forever) with much traffic "
        "suits `month`: reads not bounded in time visit every partition.",
        _choice("day", "week", "month"),
    )
    request_event_partitions_ahead: int = var(
        "REQUEST_EVENT_PARTITIONS_AHEAD",
        7,
        "Postgres: how many `request_events` partitions after the current one `llm-proxy "
        "migrate` and the dispatchers (hourly) keep created, so writes never wait for one.",
        _int(1),
    )
    event_sink_file: str = var(
        "EVENT_SINK_FILE",
        "",
        "Export every recorded event as one JSON line appended to this file (done by "
        "`llm-proxy worker`). Empty: no file export.",
        _str,
    )
    event_sink_webhook_url: str = var(
        "EVENT_SINK_WEBHOOK_URL",
        "",
        "Export recorded events by POSTing JSON batches to this URL (done by `llm-proxy "
        "worker`, retried with backoff). Empty: no webhook export.",
        _webhook_url,
    )
    event_sink_webhook_token: Secret = var(
        "EVENT_SINK_WEBHOOK_TOKEN",
        Secret(""),
        "Sent as `Authorization: Bearer ...` with every webhook batch, if set.",
        _secret,
        shown="(none)",
    )
    event_sink_webhook_batch_size: int = var(
        "EVENT_SINK_WEBHOOK_BATCH_SIZE",
        500,
        "Most events in one webhook POST.",
        _int(1),
    )
    event_sink_webhook_timeout: float = var(
        "EVENT_SINK_WEBHOOK_TIMEOUT",
        10.0,
        "How long one webhook POST may take before it is retried.",
        _duration(),
        shown="`10s`",
    )
    event_sink_max_retries: int = var(
        "EVENT_SINK_MAX_RETRIES",
        30,
        "Attempts of a failing export before it is parked in the job queue's dead-letter set "
        "(backoff doubles from 1s up to 5m between attempts, so about two hours by default).",
        _int(0),
    )
    worker_threads: int = var(
        "WORKER_THREADS",
        4,
        "Threads of `llm-proxy worker` running export and maintenance jobs (`--threads`).",
        _int(1),
    )

    # --- rate limits and quotas ---
    global_rate_limit: int = var(
        "GLOBAL_RATE_LIMIT",
        0,
        "Requests per minute the proxy admits over all clients (sliding window). Counted per "
        "process, or across every instance with DISTRIBUTED_RATE_LIMIT_ENABLED. `0` (the "
        "default) disables it: MAX_IN_FLIGHT_REQUESTS and the upstream pool's queue protect "
        "capacity without guessing a rate; the `strict` profile sets the operator guide's 100.",
        _int(0),
    )
    ip_rate_limit: int = var(
        "IP_RATE_LIMIT",
        1200,
        "Requests per minute per client IP (IPv6: per /64): 20 a second, far above one person, "
        "enough for one backend (the `strict` profile sets the operator guide's 30). The IP is "
        "the socket peer, or taken from X-Forwarded-For when the peer is in TRUSTED_PROXIES. "
        "`0` disables it.",
        _int(0),
    )
    trusted_proxies: tuple[str, ...] = var(
        "TRUSTED_PROXIES",
        (),
        "Comma-separated CIDRs (or addresses) of proxies whose X-Forwarded-For is believed, such "
        "as your nginx or load balancer; `unix` trusts a Unix-socket peer. Empty: the socket "
        "peer is the client.",
        _cidrs,
    )
    quota_count_cache_hits: bool = var(
        "QUOTA_COUNT_CACHE_HITS",
        False,
        "Whether responses served from the cache count against a token's `--max-requests` "
        "(they cost the upstream nothing, so by default they do not).",
        _bool,
    )
    distributed_rate_limit_enabled: bool = var(
        "DISTRIBUTED_RATE_LIMIT_ENABLED",
        False,
        "Keep rate limits, quotas and concurrency leases in Redis, so they hold across every "
        "worker and instance (one Redis round trip per request).",
        _bool,
    )
    distributed_rate_limit_prefix: str = var(
        "DISTRIBUTED_RATE_LIMIT_PREFIX",
        "ratelimit:",
        "Prefix of the limiter's Redis keys.",
        _key_prefix,
    )
    distributed_rate_limit_window: float = var(
        "DISTRIBUTED_RATE_LIMIT_WINDOW",
        60.0,
        "Window of DISTRIBUTED_RATE_LIMIT_MAX.",
        _duration(),
        shown="`1m`",
    )
    distributed_rate_limit_max: int = var(
        "DISTRIBUTED_RATE_LIMIT_MAX",
        60,
        "With distributed limits on: requests per DISTRIBUTED_RATE_LIMIT_WINDOW for each token "
        "that has no `--rpm` of its own. `0`: no default per-token limit.",
        _int(0),
    )
    distributed_rate_limit_fallback: bool = var(
        "DISTRIBUTED_RATE_LIMIT_FALLBACK",
        True,
        "When Redis is unreachable: `true` enforces the same limits per process (quotas stay "
        "exact through the database) and logs a warning; `false` answers 503.",
        _bool,
    )
    distributed_rate_limit_key_secret: Secret = var(
        "DISTRIBUTED_RATE_LIMIT_KEY_SECRET",
        Secret(""),
        "HMAC key for token ids and client IPs in the limiter's Redis keys, the same on every "
        "instance. Unset: derived from ENCRYPTION_KEY.",
        _secret,
        shown="(from ENCRYPTION_KEY)",
    )

    # --- secrets ---
    management_token: Secret = var(
        "MANAGEMENT_TOKEN",
        Secret(""),
        "Bearer token for the management API under `/manage/`. Unset: that API is disabled.",
        _secret,
        shown="(none)",
    )
    console_enabled: bool | None = var(
        "CONSOLE_ENABLED",
        None,
        "Serve the operator console under `/console/` (beside `/manage/`, on MANAGEMENT_LISTEN "
        "when set). Default: on when MANAGEMENT_TOKEN is set; `true` without MANAGEMENT_TOKEN "
        "stops the process. See docs/console.md.",
        _bool,
        shown="(on with MANAGEMENT_TOKEN)",
    )
    console_session_ttl: float = var(
        "CONSOLE_SESSION_TTL",
        8 * 3600.0,
        "How long a console sign-in lasts before the operator must sign in again.",
        _duration(),
        shown="`8h`",
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
    # --- tracing (OpenTelemetry's own variable names; docs/operations.md "Tracing") ---
    otel_exporter_otlp_endpoint: str = var(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "",
        "OTLP/HTTP collector base URL (`/v1/traces` is appended), e.g. `http://otel:4318`. "
        "Setting this or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT turns tracing on (needs the `otel` "
        "extra: `pip install llm-proxy[otel]`). Empty: no traces, and no cost.",
        _webhook_url,
    )
    otel_exporter_otlp_traces_endpoint: str = var(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "",
        "Full OTLP/HTTP URL for spans (used as given); wins over OTEL_EXPORTER_OTLP_ENDPOINT.",
        _webhook_url,
    )
    otel_exporter_otlp_headers: Secret = var(
        "OTEL_EXPORTER_OTLP_HEADERS",
        Secret(""),
        "Headers sent with every export, `key=value` pairs separated by commas (e.g. a "
        "collector's API key).",
        _secret,
        shown="(none)",
    )
    otel_service_name: str = var(
        "OTEL_SERVICE_NAME",
        "",
        "`service.name` of the spans. Empty: `llm-proxy` for the proxy, `llm-proxy-dispatcher` "
        "for the dispatcher.",
        _str,
    )
    otel_traces_sampler: str = var(
        "OTEL_TRACES_SAMPLER",
        "parentbased_always_on",
        "`always_on`, `always_off`, `traceidratio`, or `parentbased_` before any of them "
        "(follow the client's `traceparent` sampled flag, else the named sampler).",
        _choice(
            "always_on",
            "always_off",
            "traceidratio",
            "parentbased_always_on",
            "parentbased_always_off",
            "parentbased_traceidratio",
        ),
    )
    otel_traces_sampler_arg: float = var(
        "OTEL_TRACES_SAMPLER_ARG",
        1.0,
        "The ratio (0 to 1) of traces kept by the `traceidratio` samplers.",
        _ratio,
    )
    log_level: str = var("LOG_LEVEL", "info", "`debug`, `info`, `warning` or `error`.", _log_level)
    log_format: str = var(
        "LOG_FORMAT", "json", "`json` (one object per line) or `text`.", _choice("json", "text")
    )

    def __post_init__(self) -> None:
        redis = RedisSettings.parse(
            self.redis_addr,
            db=self.redis_db,
            username=self.redis_username,
            password=self.redis_password,
            ca_file=self.redis_tls_ca_file,
            mode=cast(Mode, self.redis_mode),
            sentinel_master=self.redis_sentinel_master,
        )
        object.__setattr__(self, "redis", redis)  # frozen: derived once, here

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Parse every variable; raise ``ConfigError`` naming the first bad one."""
        return cls._from_raw(resolve(os.environ if environ is None else environ, _KNOWN).values)

    @classmethod
    def _from_raw(cls, env: Mapping[str, str]) -> Settings:
        values: dict[str, Any] = {}
        for f in declared_fields():
            name = f.metadata["env"]
            raw = env.get(name)
            if raw is None or (raw.strip() == "" and not isinstance(f.default, (str, Secret))):
                continue
            try:
                values[f.name] = f.metadata["parse"](raw)
            except ValueError as exc:
                shown = "(hidden)" if isinstance(f.default, Secret) else repr(_redact_url(raw))
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
        if self.database_read_url and (
            self.db_driver != "postgres"
            or not self.database_read_url.startswith(("postgres://", "postgresql://"))
        ):
            raise ConfigError(
                "DATABASE_READ_URL must be a postgres:// URL, with DB_DRIVER=postgres, got "
                f"{_redact_url(self.database_read_url)!r}"
            )

        if (
            self.distributed_rate_limit_enabled
            and not self.distributed_rate_limit_key_secret
            and not self.encryption_key
        ):
            raise ConfigError(
                "DISTRIBUTED_RATE_LIMIT_KEY_SECRET (or ENCRYPTION_KEY) must be set when "
                "DISTRIBUTED_RATE_LIMIT_ENABLED=true, so every instance hashes keys alike"
            )

        if self.console_enabled and not self.management_token:
            raise ConfigError(
                "CONSOLE_ENABLED=true needs MANAGEMENT_TOKEN: the console signs in with it"
            )
        if self.metrics_retention_ms < self.metrics_aggregation_interval_ms:
            raise ConfigError(
                "METRICS_RETENTION_MS must be at least METRICS_AGGREGATION_INTERVAL_MS "
                f"({self.metrics_aggregation_interval_ms}), got {self.metrics_retention_ms}"
            )

        if self.redis_wait_replicas and self.redis_wait_timeout >= self.redis_timeout:
            raise ConfigError(
                f"REDIS_WAIT_TIMEOUT must be less than REDIS_TIMEOUT ({self.redis_timeout}s): "
                f"the WAIT reply must come before the command times out, got "
                f"{self.redis_wait_timeout}s"
            )

        if self.management_port == self.port:
            raise ConfigError(
                f"MANAGEMENT_LISTEN must use a port other than PORT ({self.port}): the proxy "
                "tells its two listeners apart by port"
            )

    @property
    def console_on(self) -> bool:
        """CONSOLE_ENABLED, defaulting to whether MANAGEMENT_TOKEN is set."""
        if self.console_enabled is None:
            return bool(self.management_token)
        return self.console_enabled

    @property
    def management_port(self) -> int | None:
        """The port of the management listener, or None when `/manage/` shares PORT."""
        if not self.management_listen:
            return None
        return int(self.management_listen.rsplit(":", 1)[1])

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes``, held to the same checks as ``from_env``."""
        settings = dataclasses.replace(self, **changes)
        settings._check()
        return settings

    @property
    def usage_stats_buffer(self) -> int:
        """USAGE_STATS_BUFFER_SIZE, or CACHE_STATS_BUFFER_SIZE when unset (as the guides say)."""
        if self.usage_stats_buffer_size is not None:
            return self.usage_stats_buffer_size
        return self.cache_stats_buffer_size

    @property
    def spool_dir(self) -> str:
        if self.event_spool_dir:
            return self.event_spool_dir
        return os.path.join(tempfile.gettempdir(), "llm-proxy-spool")

    @property
    def embedded_spool_dir(self) -> str:
        """The in-memory bus's spool: EVENT_SPOOL_DIR, else next to the SQLite file its events
        are for (so two embedded deployments on one host never replay each other's)."""
        if self.event_spool_dir or self.db_driver != "sqlite":
            return self.spool_dir
        return self.sqlite_path + "-spool"

    @property
    def sqlite_path(self) -> str:
        url = self.database_url or "llm-proxy.db"
        if url.startswith("sqlite:///"):
            return url[len("sqlite:///") :]
        if url.startswith("sqlite://"):
            return url[len("sqlite://") :]
        return url


def declared_fields() -> list[dataclasses.Field[Any]]:
    """The settings read from the environment (not the values derived from them)."""
    return [f for f in dataclasses.fields(Settings) if "env" in f.metadata]


_KNOWN = frozenset(f.metadata["env"] for f in declared_fields())


@dataclass(frozen=True, slots=True)
class Effective:
    """One setting as ``llm-proxy config show`` reports it."""

    variable: str
    value: str
    source: str  # default, profile:NAME, environment, or environment:GUIDE_NAME


def explain(
    environ: Mapping[str, str] | None = None,
) -> tuple[Settings, list[Effective], list[str]]:
    """The settings, each one's shown value (secrets masked) and source, and the notices about
    variables that have no effect here. Raises ``ConfigError`` like ``Settings.from_env``."""
    resolved = resolve(os.environ if environ is None else environ, _KNOWN)
    settings = Settings._from_raw(resolved.values)
    rows = []
    for f in declared_fields():
        env = f.metadata["env"]
        rows.append(
            Effective(env, _shown(getattr(settings, f.name)), resolved.sources.get(env, "default"))
        )
    return settings, rows, resolved.notices


def _shown(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Secret):
        return "***" if value else ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _redact_url(url: str) -> str:
    return re.sub(r"//([^:/@]*):[^@]*@", r"//\1:***@", url)


def documented_variables() -> dict[str, tuple[str, str]]:
    """``{ENV_NAME: (default as shown, meaning)}`` for every setting, in declaration order."""
    out: dict[str, tuple[str, str]] = {}
    for f in declared_fields():
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


def generated_blocks() -> dict[str, str]:
    """docs/configuration.md's generated tables, by the name of their marker comments."""
    return {"settings": markdown_table(), "profiles": profiles_table(), "seed": seed_table()}


def write_docs(path: str) -> None:
    """Replace the generated tables in docs/configuration.md."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    for name, table in generated_blocks().items():
        begin, end = f"<!-- {name}:begin -->\n", f"<!-- {name}:end -->"
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        text = head + begin + table + "\n" + end + tail
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--write"]:
        write_docs(sys.argv[2] if len(sys.argv) > 2 else "docs/configuration.md")
    else:
        print(markdown_table())
