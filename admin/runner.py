"""Running one management action, on the database or a remote deployment, and printing it."""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import aiohttp
import redis.asyncio as aioredis
import typer

from admin.connect import probe_postgres
from admin.output import emit, fail
from admin.remote import TIMEOUT, RemoteManagement, RemoteTarget, chosen_target
from shared.config import Settings
from shared.crypto import load_keyring
from shared.errors import LLMProxyError, Unavailable, UserError
from shared.invalidation import Notifier
from shared.invalidation import channel as invalidation_channel
from shared.logging import redact, setup_logging
from shared.management import CachePurger, Management
from shared.redis import make_redis, uses_redis
from shared.store import SqlStore, make_store, migrations

# Both have the same methods; mypy checks every action against both.
Manager = Management | RemoteManagement
Action = Callable[[Manager], Awaitable[Any]]
Render = Callable[[Any, bool], None]


def cli_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


async def open_store(settings: Settings, *, check_schema: bool = True) -> SqlStore:
    """Open the store, migrating it on SQLite (the embedded default needs no set-up step) and
    refusing to work on a Postgres schema that `llm-proxy migrate` has not brought up to date.
    A SQLite file that does not exist is never created here, only by `migrate`
    (``check_schema=False``) or the server: a command run from the wrong directory would
    otherwise work on a new, empty database and report nothing, or create a token the server
    never sees."""
    if check_schema:
        _refuse_missing_sqlite(settings)
    if settings.db_driver == "postgres":
        await probe_postgres(settings.database_url)
    store = make_store(settings)
    await store.open(wait=True)
    try:
        if not check_schema:
            pass
        elif settings.db_driver == "sqlite":
            await store.migrate()
        elif (version := await store.schema_version()) == 0:
            raise Unavailable("the database has no schema yet: run `llm-proxy migrate` first")
        elif version < (needed := max(m.version for m in migrations.load("postgres"))):
            raise Unavailable(
                f"the database schema is at version {version} and this llm-proxy needs "
                f"{needed}: run `llm-proxy migrate` first"
            )
    except BaseException:
        await store.close()
        raise
    return store


def _refuse_missing_sqlite(settings: Settings) -> None:
    path = settings.sqlite_path
    if settings.db_driver != "sqlite" or path == ":memory:" or os.path.exists(path):
        return
    raise UserError(
        f"no database at {os.path.abspath(path)}: run this in the directory where `llm-proxy "
        "server` runs, point DATABASE_URL at the server's database file, or use --api-url "
        "(`llm-proxy migrate` creates a new one)"
    )


async def _run_local(settings: Settings, action: Action) -> Any:
    _refuse_missing_sqlite(settings)  # before the keyring: no key file beside a missing database
    keyring = load_keyring(settings)
    store = await open_store(settings)
    redis = make_redis(settings) if uses_redis(settings) else None
    # revocations reach every running proxy worker of this deployment
    notifier = Notifier(store, redis, channel=invalidation_channel(settings))
    try:
        management = Management(
            store=store,
            keyring=keyring,
            actor=cli_actor(),
            notifier=notifier,
            count_cache_hits=settings.quota_count_cache_hits,
            cache=shared_cache(settings, redis),
            cache_backend=settings.http_cache_backend,
            event_bus=settings.event_bus,
            redis=redis,
            stream_key=settings.redis_stream_key,
            stream_shards=settings.redis_stream_shards,
        )
        return await action(management)
    finally:
        if redis is not None:
            await redis.aclose()
        await store.close()


def shared_cache(settings: Settings, redis: aioredis.Redis | None) -> CachePurger | None:
    """The response cache every instance shares, when there is one (the Redis backend)."""
    if settings.http_cache_backend != "redis" or redis is None:
        return None
    from proxy.cache import build_backend

    return build_backend(settings, redis)


async def _run_remote(target: RemoteTarget, action: Action) -> Any:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        return await action(RemoteManagement(session, target))


def run(
    ctx: typer.Context,
    action: Action,
    *,
    as_json: bool,
    columns: Sequence[str] | None = None,
    render: Render | None = None,
    result: Callable[[Any], Any] | None = None,
) -> None:
    """Run ``action`` here, or on the deployment ``llm-proxy manage --api-url`` names, and print
    its result (picked by ``result``, printed by ``render`` if given); exit 1 with one line on
    any error."""
    outcome = perform(chosen_target(ctx), action)
    shown = result(outcome) if result is not None else outcome
    if render is not None:
        render(shown, as_json)
    else:
        emit(shown, as_json=as_json, columns=columns)


def perform(target: RemoteTarget | None, action: Action) -> Any:
    """Run ``action`` on ``target``'s management API, or on the database when it is None."""
    if target is not None:
        return guarded(lambda settings: _run_remote(target, action))
    return guarded(lambda settings: _run_local(settings, action))


def guarded_settings() -> Settings:
    """The settings, or one line naming the bad variable and exit 1."""
    try:
        return Settings.from_env()
    except LLMProxyError as exc:
        fail(exc.message)
        raise  # unreachable: fail() exits


def guarded(body: Callable[[Settings], Coroutine[Any, Any, Any]]) -> Any:
    """Read settings, run ``body``; turn every failure into one line on stderr and exit 1."""
    try:
        settings = Settings.from_env()
        setup_logging(
            settings.log_level if settings.log_level != "info" else "warning", settings.log_format
        )
        logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)  # we say it in one line
        return asyncio.run(body(settings))
    except LLMProxyError as exc:
        fail(exc.message)
    except OSError as exc:
        fail(f"cannot reach a required service: {redact(str(exc))}")
    except Exception as exc:  # a crash still gets one line, with anything secret masked
        text = redact(str(exc)).splitlines()[0] if str(exc) else ""
        fail(f"{type(exc).__name__}: {text}")
