"""Tuning profiles and the second operator guide's variable names, resolved before parsing.

``resolve(environ)`` turns the process environment into the raw values ``Settings`` parses: a
profile (``LLM_PROXY_PROFILE``) supplies presets, explicit variables override them, and the Bun
guide's names that differ from ours are mapped onto our settings, or accepted with a notice
logged at start when they have no effect here. Nothing the guide names is silently ignored.
docs/configuration.md has the tables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from shared.errors import ConfigError
from shared.parsing import boolean, integer

PROFILE_ENV = "LLM_PROXY_PROFILE"

#: Presets of our variables for the guide's four use cases, plus ``strict``: the first guide's
#: request-rate defaults (100 a minute overall, 30 per client address) for operators who want
#: them. Several profiles may be named, comma-separated; later ones win.
PROFILES: dict[str, dict[str, str]] = {
    "low-latency": {
        "POOL_MIN_CONNECTIONS": "10",
        "POOL_MAX_CONNECTIONS": "50",
        "POOL_WARM": "true",
        "HTTP_CACHE_ENABLED": "true",
        "HTTP_CACHE_DEFAULT_TTL": "1m",
        "CACHE_MAX_SIZE": "5000",
        "APIKEY_CACHE_SIZE": "10000",
        "APIKEY_CACHE_TTL_MS": "600000",
        "STREAM_RESPONSE_CHUNK_SIZE": "32768",
    },
    "high-throughput": {
        "POOL_MIN_CONNECTIONS": "20",
        "POOL_MAX_CONNECTIONS": "100",
        "POOL_WARM": "true",
        "HTTP_CACHE_ENABLED": "true",
        "HTTP_CACHE_DEFAULT_TTL": "1h",
        "CACHE_MAX_SIZE": "10000",
        "APIKEY_CACHE_SIZE": "10000",
        "APIKEY_CACHE_TTL_MS": "3600000",
        "STREAM_RESPONSE_CHUNK_SIZE": "65536",
        "BATCHING_ENABLED": "true",
        "BATCH_WINDOW_MS": "100",
        "BATCH_MAX_SIZE": "20",
        "BATCH_MAX_QUEUE_SIZE": "5000",
    },
    "development": {
        "POOL_MIN_CONNECTIONS": "2",
        "POOL_MAX_CONNECTIONS": "5",
        "POOL_WARM": "false",
        "HTTP_CACHE_ENABLED": "false",
        "APIKEY_CACHE_SIZE": "100",
        "APIKEY_CACHE_TTL_MS": "60000",
        "WORKERS": "1",
        "LOG_LEVEL": "debug",
        "LOG_FORMAT": "text",
        "PROFILING_ENABLED": "true",
    },
    "edge": {
        "POOL_MIN_CONNECTIONS": "1",
        "POOL_MAX_CONNECTIONS": "3",
        "POOL_WARM": "false",
        "HTTP_CACHE_ENABLED": "true",
        "HTTP_CACHE_DEFAULT_TTL": "5m",
        "CACHE_MAX_SIZE": "100",
        "HTTP_CACHE_MAX_BYTES": "8388608",
        "APIKEY_CACHE_SIZE": "100",
        "APIKEY_CACHE_TTL_MS": "300000",
        "STREAM_RESPONSE_CHUNK_SIZE": "4096",
        "WORKERS": "1",
    },
    "strict": {
        "GLOBAL_RATE_LIMIT": "100",
        "IP_RATE_LIMIT": "30",
    },
}


_flag = boolean
_count = integer(0)


@dataclass(frozen=True, slots=True)
class SeedVariable:
    """A variable of the Bun guide that is not one of our settings, and what we do with it.

    ``maps_to``: our setting that honours it (``convert`` turns its text into that setting's
    text). Without ``maps_to`` it has no effect here, which is logged at start. ``why`` is the one
    line an operator reads.
    """

    name: str
    why: str
    maps_to: str = ""
    convert: Callable[[str], str] = field(default=str.strip)
    check: Callable[[str], object] = field(default=str.strip)


def _ms(text: str) -> str:
    return f"{_count(text)}ms"


def _bool_text(text: str) -> str:
    return "true" if _flag(text) else "false"


SEED_VARIABLES: tuple[SeedVariable, ...] = (
    SeedVariable(
        "CACHE_ENABLED",
        "the response cache switch",
        maps_to="HTTP_CACHE_ENABLED",
        convert=_bool_text,
        check=_flag,
    ),
    SeedVariable(
        "CACHE_TTL_MS",
        "how long a response without freshness information is kept",
        maps_to="HTTP_CACHE_DEFAULT_TTL",
        convert=_ms,
        check=_count,
    ),
    SeedVariable(
        "METRICS_ENABLED",
        "the Prometheus endpoint switch",
        maps_to="ENABLE_METRICS",
        convert=_bool_text,
        check=_flag,
    ),
    SeedVariable(
        "METRICS_RETENTION_MS",
        "the proxy keeps no metrics history itself; Prometheus scrapes METRICS_PATH and keeps it",
        check=_count,
    ),
    SeedVariable(
        "METRICS_AGGREGATION_INTERVAL_MS",
        "metrics are aggregated by Prometheus at scrape time, not by the proxy",
        check=_count,
    ),
    SeedVariable(
        "RATE_LIMIT_BATCH_INTERVAL_MS",
        "limits and quotas are counted exactly, one atomic check per request; nothing is batched",
        check=_count,
    ),
    SeedVariable(
        "RATE_LIMIT_MAX_BATCH_SIZE",
        "limits and quotas are counted exactly, one atomic check per request; nothing is batched",
        check=_count,
    ),
    SeedVariable(
        "STREAM_REQUEST_CHUNK_SIZE",
        "request bodies are forwarded in the pieces the server reads, each as soon as it arrives",
        check=_count,
    ),
    SeedVariable(
        "STREAM_BUFFER_POOL_ENABLED",
        "Python's byte strings are not pooled; there is no buffer pool to switch",
        check=_flag,
    ),
)


@dataclass(slots=True)
class Resolved:
    """Raw values for ``Settings`` to parse, where each came from, and notices for the log."""

    values: dict[str, str]
    sources: dict[str, str]
    notices: list[str]


def profile_names(text: str) -> tuple[str, ...]:
    """``LLM_PROXY_PROFILE``'s value as profile names (raises ValueError naming the choices)."""
    names = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    for name in names:
        if name not in PROFILES:
            raise ValueError("a comma-separated list of " + ", ".join(PROFILES))
    return names


def resolve(environ: Mapping[str, str], known: frozenset[str]) -> Resolved:
    """The raw values of our ``known`` variables: defaults are left out, a profile's presets
    come first, explicit variables (ours, then the guide's mapped names) override them."""
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    raw_profile = environ.get(PROFILE_ENV, "")
    try:
        names = profile_names(raw_profile)
    except ValueError as exc:
        raise ConfigError(f"{PROFILE_ENV} must be {exc}, got {raw_profile!r}") from None
    for name in names:
        for variable, value in PROFILES[name].items():
            values[variable] = value
            sources[variable] = f"profile:{name}"
    for variable in known:
        if variable in environ:
            values[variable] = environ[variable]
            sources[variable] = "environment"
    notices: list[str] = []
    for seed in SEED_VARIABLES:
        raw = environ.get(seed.name)
        if raw is None or not raw.strip():
            continue
        try:
            seed.check(raw)
        except ValueError as exc:
            raise ConfigError(f"{seed.name} must be {exc}, got {raw!r}") from None
        if not seed.maps_to:
            notices.append(f"{seed.name} has no effect here: {seed.why}")
            continue
        if sources.get(seed.maps_to) == "environment":
            raise ConfigError(
                f"{seed.name} and {seed.maps_to} are both set; set only {seed.maps_to}"
            )
        converted = seed.convert(raw)
        values[seed.maps_to] = converted
        sources[seed.maps_to] = f"environment:{seed.name}"
    return Resolved(values, sources, notices)


#: The Bun guide's variables that are our settings under the same name.
SEED_SAME_NAME = (
    "POOL_MIN_CONNECTIONS",
    "POOL_MAX_CONNECTIONS",
    "POOL_WARM",
    "POOL_ACQUIRE_TIMEOUT",
    "DISABLE_CONNECTION_POOL",
    "CACHE_MAX_SIZE",
    "APIKEY_CACHE_SIZE",
    "APIKEY_CACHE_TTL_MS",
    "STREAM_RESPONSE_CHUNK_SIZE",
    "BATCHING_ENABLED",
    "BATCH_WINDOW_MS",
    "BATCH_MAX_SIZE",
    "BATCH_MAX_QUEUE_SIZE",
    "PROFILING_ENABLED",
)


def profiles_table() -> str:
    """docs/configuration.md's table of the presets each profile sets."""
    variables = sorted({v for preset in PROFILES.values() for v in preset})
    lines = [
        "| Variable | " + " | ".join(f"`{name}`" for name in PROFILES) + " |",
        "| --- |" + " --- |" * len(PROFILES),
    ]
    for variable in variables:
        cells = [f"`{PROFILES[p][variable]}`" if variable in PROFILES[p] else "" for p in PROFILES]
        lines.append(f"| `{variable}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_table() -> str:
    """docs/configuration.md's table: each variable of the tuning guide and what it does here."""
    lines = ["| Guide's variable | Here | Behaviour |", "| --- | --- | --- |"]
    for name in SEED_SAME_NAME:
        lines.append(f"| `{name}` | `{name}` | honoured as the guide says (same setting) |")
    for seed in SEED_VARIABLES:
        if seed.maps_to:
            lines.append(
                f"| `{seed.name}` | `{seed.maps_to}` | honoured: {seed.why} (setting both is "
                "refused) |"
            )
        else:
            lines.append(
                f"| `{seed.name}` | — | accepted, no effect, logged at start: {seed.why} |"
            )
    return "\n".join(lines)
