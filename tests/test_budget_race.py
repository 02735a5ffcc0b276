"""The budget race: three proxy instances of two workers each over one Postgres (and, on the
production path, one Redis with the event stream and a dispatcher), fifty concurrent clients
streaming against a $1.00 token budget. The settled spend stays within $1.00 plus one request's
largest estimate, and once every request is settled the budget's spend equals the sum of the
recorded events' costs exactly."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import httpx
import psycopg
from typer.testing import CliRunner

from admin.cli import app
from proxy.budgets.keys import BudgetKeys
from proxy.limits.keys import key_secret
from proxy.redis_client import FastRedis
from shared.config import Settings
from shared.crypto import new_key
from shared.money.budgets import Window
from shared.store.budgets import BudgetLimit
from tests.proxy_process import UNLIMITED, DispatcherProcess, ProxyProcess, provision
from tests.services import create_database, drop_database, require
from tests.upstream_script import Reply, ScriptedUpstream, chat_chunk

DOLLAR = 10**12
USAGE = {"prompt_tokens": 20, "completion_tokens": 30, "total_tokens": 50}
# at $100 / $1000 per million: 20 x 100 + 30 x 1000 micro-dollars = $0.032 a request
ACTUAL = 20 * 100_000_000 + 30 * 1_000_000_000


def test_budget_race_three_instances(tmp_path: Path) -> None:
    """The database decides (no Redis: the embedded bus writes the events)."""
    require("PostgreSQL", "127.0.0.1", 5432)
    _race(tmp_path, {})


def test_budget_race_on_redis(tmp_path: Path, redis_env: dict[str, str]) -> None:
    """The production path: Redis decides, events go over the Redis stream to a dispatcher."""
    require("PostgreSQL", "127.0.0.1", 5432)
    tag = uuid.uuid4().hex[:8]
    env = {
        **redis_env,
        "LLM_PROXY_EVENT_BUS": "redis-streams",
        "REDIS_STREAM_KEY": f"events-{tag}",
        "DISTRIBUTED_RATE_LIMIT_PREFIX": f"race-{tag}:",
        "EVENT_SPOOL_DIR": str(tmp_path / "spool"),
    }
    logs = _race(tmp_path, env, redis=True)
    assert "Redis unreachable for budgets" not in logs  # Redis decided every request


def _race(tmp_path: Path, extra: dict[str, str], *, redis: bool = False) -> str:
    db_url = create_database()
    upstream = ScriptedUpstream().start()
    upstream.scripts["race-model"] = lambda body: Reply(
        [
            b"data: " + chat_chunk("race-model", "hello") + b"\n\n",
            b"data: " + chat_chunk("race-model", None, USAGE) + b"\n\n",  # type: ignore[arg-type]
            b"data: [DONE]\n\n",
        ]
    )
    env = {
        **UNLIMITED,
        "DB_DRIVER": "postgres",
        "DATABASE_URL": db_url,
        "ENCRYPTION_KEY": new_key(),
        "HTTP_CACHE_ENABLED": "false",
        **extra,
    }
    proxies: list[ProxyProcess] = []
    dispatcher = DispatcherProcess(env=env, cwd=tmp_path) if redis else None
    try:
        cred = provision(env, tmp_path, upstream.base_url, budget_usd="1.00", budget_window="1d")
        runner = CliRunner()
        price = ["manage", "prices", "set", "race-model", "--input", "100", "--output", "1000"]
        done = runner.invoke(app, [*price, "--effective-from", "2020-01-01"], env=env)
        assert done.exit_code == 0, done.output
        proxies = [ProxyProcess(env=env, cwd=tmp_path, workers=2).start() for _ in range(3)]
        if dispatcher is not None:
            dispatcher.start()
        statuses, estimates = asyncio.run(_clients([p.url for p in proxies], cred.token))
        assert statuses.get(200, 0) > 0 and statuses.get(429, 0) > 0, statuses
        assert set(statuses) == {200, 429}, statuses
        with psycopg.connect(db_url, autocommit=True) as conn:
            deadline = time.monotonic() + 60
            while True:  # every request's event written and every settlement recorded
                events = conn.execute(
                    "SELECT count(*), COALESCE(sum(cost_picousd), 0) FROM request_events "
                    "WHERE token_id = %s AND phase = 'final'",
                    (cred.token_id,),
                ).fetchone()
                held = conn.execute(
                    "SELECT COALESCE(sum(reserved_picos), 0), COALESCE(sum(spent_picos), 0) "
                    "FROM budget_buckets WHERE owner_id = %s",
                    (cred.token_id,),
                ).fetchone()
                assert events is not None and held is not None
                if events[0] == sum(statuses.values()) and held[0] == 0 and held[1] == events[1]:
                    break
                assert time.monotonic() < deadline, (events, held, statuses)
                time.sleep(0.2)
        spent = int(held[1])
        assert spent == int(events[1]) == statuses[200] * ACTUAL  # to the pico-dollar
        assert spent <= DOLLAR + max(estimates)
        if redis:  # the counter that decided: nothing left reserved, the same spend
            counter = asyncio.run(_counter(env, cred.token_id))
            assert counter[b"r"] == b"0", counter
            assert sum(int(v) for f, v in counter.items() if f.startswith(b"p:")) == spent
        return "".join(p.logs() for p in proxies)
    finally:
        for proxy in proxies:
            proxy.stop()
        if dispatcher is not None:
            dispatcher.stop()
        upstream.stop()
        drop_database(db_url)


async def _counter(env: dict[str, str], token_id: str) -> dict[bytes, bytes]:
    """The token budget's Redis counter, read as the proxy names it."""
    settings = Settings.from_env(env)
    keys = BudgetKeys(settings.distributed_rate_limit_prefix + "budget:", key_secret(settings))
    client = FastRedis.from_settings(settings)
    try:
        key = keys.key(BudgetLimit(token_id, Window("1d"), picos=DOLLAR), token_id)
        flat = await client.command("HGETALL", key)
    finally:
        await client.aclose()
    return dict(zip(flat[::2], flat[1::2], strict=True))


async def _clients(urls: list[str], token: str) -> tuple[dict[int, int], list[int]]:
    statuses: dict[int, int] = {}
    estimates: list[int] = []
    body = {
        "model": "race-model",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 40,
        "stream": True,
    }
    raw = json.dumps(body).encode()
    # the proxy's bound: every byte of the body a prompt token, max_tokens of completion
    estimates.append(len(raw) * 100_000_000 + 40 * 1_000_000_000)

    async with httpx.AsyncClient(timeout=60) as client:

        async def one(i: int) -> None:
            while True:
                async with client.stream(
                    "POST",
                    urls[i % len(urls)] + "/v1/chat/completions",
                    content=raw,
                    headers={
                        "Authorization": f"Bearer {token}",
                        "content-type": "application/json",
                    },
                ) as reply:
                    await reply.aread()
                    statuses[reply.status_code] = statuses.get(reply.status_code, 0) + 1
                    if reply.status_code != 200:
                        assert reply.json()["error"]["code"] == "budget_exceeded"
                        return

        await asyncio.gather(*(one(i) for i in range(50)))
    return statuses, estimates
