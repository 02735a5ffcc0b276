"""The reconciliation run on the production path: 100,000 requests (answers and streams, cache
hits, clients hanging up mid-stream, priced models from the shipped table and an operator's
project rate, and a model without a price) through gunicorn with two uvicorn workers, Redis as
the bus and the cache, a dispatcher writing to Postgres. Once the dispatcher has drained and
every reservation is settled, for each token and for the project: the sum of the events' costs
= the sum of the rollups' costs = the budget's spend counter, to the pico-dollar, and the tokens
of every kind likewise; the model without a price is counted unpriced, never $0."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from typer.testing import CliRunner

from admin.cli import app
from bench.fake_upstream import run_loop
from bench.procs import cpu_seconds, descendants
from shared.money.amounts import PICOS
from tests.load_client import Call, Tally, drive, post
from tests.priced_upstream import HANG_UP
from tests.proxy_process import (
    DispatcherProcess,
    Provisioned,
    ProxyProcess,
    production_env,
    provision,
    terminate,
)
from tests.services import RedisProcess

REQUESTS = 100_000
CONNECTIONS = 48
PRICED = ("gpt-4o-mini", "gpt-4.1-nano", "house-model")  # shipped, shipped, the project's own
UNPRICED_MODEL = "mystery-model"
CACHEABLE_BODIES = 40
TOKEN_KINDS = ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens")


@pytest.fixture
def upstream_url(tmp_path: Path) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.priced_upstream", "--port", "0"],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parent.parent,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()  # printed once every worker listens
        assert "listening on" in line, line
        yield line.split()[4]
    finally:
        terminate(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def _cli(env: dict[str, str], *args: str) -> Any:
    done = CliRunner().invoke(app, [*args, "--json"], env=env)
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


def _calls(a: Provisioned, b: Provisioned) -> tuple[list[Call], dict[str, int]]:
    """The mix, one call per request; also how many of each kind. Token A (a hard budget)
    sends priced requests only (a hard dollar budget refuses a model without a price); token B
    (a soft budget) sends the unpriced ones too."""
    calls: list[Call] = []
    kinds: dict[str, int] = {}
    path = "/v1/chat/completions"
    for i in range(REQUESTS):
        slot = i % 100
        model = PRICED[i % len(PRICED)]
        token, headers, hang_up = a.token, {}, False
        body: dict[str, Any] = {"model": model, "max_tokens": 64}
        body["messages"] = [{"role": "user", "content": f"question {i} " + "x" * (i % 57)}]
        if slot < 36:
            kind = "answer"
        elif slot < 60:
            kind, body["stream"] = "stream", True
        elif slot < 80:  # a few bodies asked again and again, and allowed a cached answer
            kind, n = "cacheable", i % CACHEABLE_BODIES
            body["messages"] = [{"role": "user", "content": f"popular question {n}"}]
            body["stream"] = n % 2 == 0
            headers["X-Proxy-Cache-TTL"] = "3600"
        elif slot < 85:
            kind, body["stream"], body["user"], hang_up = "hang-up", True, HANG_UP, True
        elif slot < 91:
            kind, token, body["model"] = "unpriced", b.token, UNPRICED_MODEL
            body["stream"] = slot % 2 == 0
        else:
            kind, token, body["stream"] = "b-priced", b.token, slot % 2 == 0
            if slot == 99:
                kind, body["stream"], body["user"], hang_up = "b-hang-up", True, HANG_UP, True
        headers["Authorization"] = f"Bearer {token}"
        calls.append(Call(kind, post(path, orjson.dumps(body), headers), hang_up))
        kinds[kind] = kinds.get(kind, 0) + 1
    return calls, kinds


def _events(conn: psycopg.Connection[Any], where: str, *args: object) -> dict[str, int]:
    """Sums over the final events matching ``where``."""
    sums = ", ".join(f"COALESCE(SUM({k}), 0)" for k in TOKEN_KINDS)
    row = conn.execute(
        "SELECT count(*), COALESCE(SUM(cost_picousd), 0), "
        "COUNT(*) FILTER (WHERE cost_picousd IS NULL), "
        "COUNT(*) FILTER (WHERE cache_status = 'hit'), "
        "COALESCE(SUM(prompt_tokens + completion_tokens) FILTER (WHERE cache_status <> 'hit'), 0), "
        f"{sums} FROM request_events WHERE phase = 'final' AND {where}",
        args,
    ).fetchone()
    assert row is not None
    names = ("requests", "picos", "unpriced", "cache_hits", "budget_tokens", *TOKEN_KINDS)
    return dict(zip(names, map(int, row), strict=True))


def _picos(usd: str | None) -> int:
    assert usd is not None
    return int(Decimal(usd) * PICOS)


def _settled(env: dict[str, str], show: list[str]) -> dict[str, Any]:
    """The owner's budget once no reservation is held (read as `show --json` reads it)."""
    deadline = time.monotonic() + 120
    while True:
        budgets = [b for b in _cli(env, "manage", *show)["budgets"] if b["kind"] == "budget"]
        assert len(budgets) == 1, budgets
        if budgets[0]["reserved_tokens"] == 0 and budgets[0]["reserved_usd"] == "0":
            return dict(budgets[0])
        assert time.monotonic() < deadline, budgets
        time.sleep(0.5)


@pytest.mark.timeout(900)  # 100,000 requests: about 2.5 minutes on 2 shared cores
def test_costs_reconcile_across_events_rollups_and_budgets(
    tmp_path: Path, db_url: str, upstream_url: str
) -> None:
    redis = RedisProcess().start()
    env = production_env(
        db_url,
        redis.addr,
        HTTP_CACHE_ENABLED="true",
        HTTP_CACHE_BACKEND="redis",
        REDIS_CACHE_KEY_PREFIX=f"cache-{uuid.uuid4().hex[:8]}:",
        LOG_LEVEL="warning",
    )
    a = provision(
        env,
        tmp_path,
        upstream_url + "/v1",
        budget_usd="100000",
        budget_tokens=10**12,
        budget_window="1d",
        label="a",
    )
    proxy = dispatcher = None
    try:
        project = a.project_id
        soft = ("--budget-usd", "1000000", "--budget-mode", "soft")
        _cli(env, "manage", "project", "update", project, *soft)
        made = _cli(
            env,
            *("manage", "token", "generate", "--project-id", project, "--label", "b"),
            *("--budget-usd", "100000", "--budget-tokens", "1000000000000"),
            *("--budget-window", "1mo", "--budget-mode", "soft"),
        )
        b = Provisioned(project, made["id"], made["token"])
        price = ["manage", "prices", "set", "house-model", "--input", "0.7", "--output", "2.8"]
        _cli(env, *price, "--cached-input", "0.07", "--reasoning", "3.1", "--project-id", project)
        calls, kinds = _calls(a, b)
        dispatcher = DispatcherProcess(env=env, cwd=tmp_path).start()
        proxy = ProxyProcess(env=env, cwd=tmp_path, workers=2).start()
        started = time.monotonic()
        tally: Tally = run_loop(drive("127.0.0.1", proxy.port, calls, CONNECTIONS))
        sent_in = time.monotonic() - started
        assert proxy.proc is not None and dispatcher.proc is not None
        cpu = {
            "proxy": cpu_seconds([proxy.proc.pid, *descendants(proxy.proc.pid)]),
            "dispatcher": cpu_seconds([dispatcher.proc.pid]),
        }
        print(f"{REQUESTS} requests sent in {sent_in:.1f}s; CPU seconds {cpu}")
        assert not tally.failures, tally.failures[:5]
        assert dict(tally.statuses) == {(kind, 200): n for kind, n in kinds.items()}, tally.statuses
        with psycopg.connect(db_url, autocommit=True) as conn:
            deadline = time.monotonic() + 180
            while _events(conn, "project_id = %s", project)["requests"] < REQUESTS:
                assert time.monotonic() < deadline, "the dispatcher never drained"
                time.sleep(0.5)
            owners = {
                "a": ["token", "show", a.token_id],
                "b": ["token", "show", b.token_id],
                "project": ["project", "show", project],
            }
            # each worker writes what Redis decided to the database every half second, and
            # all of it when it stops: stopped, the durable record is complete
            assert proxy.stop() == 0, proxy.logs()[-3000:]
            spent = {name: _settled(env, show) for name, show in owners.items()}
            events = {
                "a": _events(conn, "token_id = %s", a.token_id),
                "b": _events(conn, "token_id = %s", b.token_id),
                "project": _events(conn, "project_id = %s", project),
            }
            cut = conn.execute(
                "SELECT count(*) FROM request_events WHERE project_id = %s AND stream "
                "AND usage_source = 'estimated'",
                (project,),
            ).fetchone()
        usage = _cli(env, "manage", "usage", "--project-id", project, "--by", "token")
        rollups = {row["token"]: row for row in usage["data"]}
        rollups = {"a": rollups[a.token_id], "b": rollups[b.token_id], "project": usage["total"]}
        for name in owners:
            ev, rolled, budget_spent = events[name], rollups[name], spent[name]
            assert ev["picos"] == _picos(rolled["priced_cost_usd"]) > 0, name
            assert ev["picos"] == _picos(budget_spent["spent_usd"]), name  # to the pico-dollar
            assert ev["budget_tokens"] == budget_spent["spent_tokens"], name
            for kind in TOKEN_KINDS:
                assert ev[kind] == rolled[kind] > 0, (name, kind)
            assert ev["requests"] == rolled["requests"]
            assert ev["cache_hits"] == rolled["cache_hits"]
            assert ev["unpriced"] == rolled["unpriced"]
        # every request once; what the clients saw as hits is what was recorded as hits
        assert events["project"]["requests"] == REQUESTS
        assert events["project"]["cache_hits"] == sum(tally.cache_hits.values())
        assert tally.cache_hits["cacheable"] >= kinds["cacheable"] // 2
        # the clients that hung up were cut mid-stream and recorded with estimated usage
        assert cut is not None and cut[0] >= kinds["hang-up"] + kinds["b-hang-up"]
        # the model without a price: counted unpriced, its cost unknown, never $0
        assert events["a"]["unpriced"] == 0
        assert events["b"]["unpriced"] == rollups["b"]["unpriced"] == kinds["unpriced"]
        assert rollups["b"]["cost_usd"] is None and usage["total"]["cost_usd"] is None
        assert rollups["a"]["cost_usd"] == rollups["a"]["priced_cost_usd"]
        unpriced = _cli(env, "manage", "prices", "unpriced", "--project-id", project)
        assert [(m["model"], m["requests"]) for m in unpriced] == [
            (UNPRICED_MODEL, kinds["unpriced"])
        ]
    finally:
        if proxy is not None:
            proxy.stop()
        if dispatcher is not None:
            dispatcher.stop()
        redis.stop()
