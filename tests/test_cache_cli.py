"""`llm-proxy manage cache purge`, driven for real against Redis and audited in the database."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from admin.cli import app
from proxy.cache import HttpCache, RedisBackend
from shared.config import Settings
from shared.redis import make_redis
from tests.cache_client import Upstream, request

P1 = "0190c0de-0000-7000-8000-000000000001"
P2 = "0190c0de-0000-7000-8000-000000000002"


@pytest.fixture
def env(
    tmp_path: Path, encryption_key: str, redis_env: dict[str, str], unique_prefix: str
) -> Iterator[dict[str, str]]:
    prefix = f"test:cache:{unique_prefix}"
    (tmp_path / "proxy.db").touch()  # the server's database; the CLI never creates one
    yield {
        "DATABASE_URL": str(tmp_path / "proxy.db"),
        "ENCRYPTION_KEY": encryption_key,
        "HTTP_CACHE_BACKEND": "redis",
        "REDIS_CACHE_KEY_PREFIX": prefix,
        **redis_env,
    }

    async def clean() -> None:
        client = make_redis(Settings.from_env(redis_env))
        await RedisBackend(client, prefix=prefix).purge()
        await client.aclose()

    asyncio.run(clean())


async def _pass(env: dict[str, str]) -> list[str]:
    """Request the same four things in two projects; return each X-PROXY-CACHE."""
    settings = Settings.from_env(env)
    client = make_redis(settings)
    cache = HttpCache(RedisBackend(client, prefix=settings.redis_cache_key_prefix))
    upstream = Upstream()
    vary = Upstream(
        headers={"content-type": "application/json", "vary": "Origin", "cache-control": "public"}
    )
    opt_in = {"cache-control": "public, max-age=60"}
    out = []
    for project in (P1, P2):
        for path in ("/v1/models", "/v1/models/gpt-4o"):
            out.append(await request(cache, upstream, project=project, path=path))
        out.append(
            await request(
                cache,
                upstream,
                project=project,
                method="POST",
                path="/v1/embeddings",
                headers=opt_in,
                body=b'{"input":"x"}',
            )
        )
        out.append(
            await request(cache, vary, project=project, path="/v1/files", headers={"origin": "o"})
        )
    await client.aclose()
    return [r.cache or "" for r in out]


def cli(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


def test_purge_removes_entries_and_is_audited(env: dict[str, str]) -> None:
    asyncio.run(_pass(env))
    assert asyncio.run(_pass(env)) == ["hit"] * 8

    result = cli(
        env, "manage", "cache", "purge", "--project-id", P1, "--path-prefix", "/v1/models", "--json"
    )
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out == {
        "purged": 2,
        "backend": "redis",
        "project_id": P1,
        "path_prefix": "/v1/models",
    }
    result = cli(env, "manage", "cache", "purge", "--project-id", P1)
    assert result.exit_code == 0, result.stderr
    assert "purged 2 cached responses of project" in result.stdout  # the POST and the Vary entry
    # P1 lost everything, P2 nothing.
    assert asyncio.run(_pass(env)) == ["miss"] * 4 + ["hit"] * 4

    result = cli(env, "manage", "cache", "purge", "--json")
    assert json.loads(result.stdout)["purged"] == 8

    audit = cli(env, "manage", "audit", "list", "--action", "cache.purge", "--json")
    events = json.loads(audit.stdout)
    assert len(events) == 3 and {e["outcome"] for e in events} == {"success"}
    oldest = events[-1]
    assert oldest["target_type"] == "project" and oldest["target_id"] == P1
    assert oldest["details"] == {"project_id": P1, "path_prefix": "/v1/models", "backend": "redis"}


def test_in_memory_backend_tells_every_worker(env: dict[str, str]) -> None:
    """The workers' caches are out of the command's reach: it logs the purge in the change log
    that every worker follows (tests/test_cache_e2e.py shows running workers obey it)."""
    env = {**env, "HTTP_CACHE_BACKEND": "in-memory"}
    result = cli(env, "manage", "cache", "purge", "--project-id", P1, "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["purged"] is None and out["backend"] == "in-memory"
    changes = asyncio.run(_changes(env))
    assert [(kind, json.loads(target)) for _, kind, target in changes] == [("cache", [P1, None])]
    text = cli(env, "manage", "cache", "purge").stdout
    assert text.startswith("every worker's in-memory cache was told to purge all projects")


async def _changes(env: dict[str, str]) -> list[tuple[int, str, str]]:
    from shared.store import make_store

    store = make_store(Settings.from_env(env))
    await store.open()
    try:
        return await store.changes_since(0)
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--path-prefix", "v1/models"], "error: path prefix must start with /"),
        (["--project-id", "sk-llmp-abcdefghijklmnopqrstuvwxyz"], "error: invalid project id"),
    ],
)
def test_bad_input_is_one_line(env: dict[str, str], args: list[str], message: str) -> None:
    result = cli(env, "manage", "cache", "purge", *args)
    assert result.exit_code == 1
    assert result.stderr.startswith(message) and len(result.stderr.splitlines()) == 1
    assert "abcdefghijklmnopqrstuvwxyz" not in result.stderr  # a pasted token is masked


def test_redis_down_is_one_line(env: dict[str, str]) -> None:
    from tests.services import free_port

    result = cli({**env, "REDIS_ADDR": f"127.0.0.1:{free_port()}"}, "manage", "cache", "purge")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: The response cache backend (Redis) is unavailable."
