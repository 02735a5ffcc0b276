"""`manage prices` and `manage usage`, on the database and through the management API, on
SQLite and Postgres: rows set, imported and exported exactly; unpriced models listed; usage read
from the rollups, with an unknown cost shown as unknown."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from decimal import Decimal

from shared.clock import utcnow
from shared.config import Settings
from shared.events import RequestEvent
from shared.store import make_store
from tests.test_cli import UPSTREAM_KEY, cli, cli_env, fails, ok_json

__all__ = ["cli_env"]


def _record(db_env: dict[str, str], events: list[RequestEvent]) -> None:
    async def go() -> None:
        store = make_store(Settings.from_env(db_env))
        await store.open()
        try:
            await store.record_batch(events)
        finally:
            await store.close()

    asyncio.run(go())


def _event(n: int, project_id: str, token_id: str, model: str, **kw: int) -> RequestEvent:
    return RequestEvent(
        event_id=f"00000000-0000-7000-8000-{n:012d}",
        request_id=f"r{n}",
        ts=utcnow().timestamp(),
        project_id=project_id,
        token_id=token_id,
        method="POST",
        path="/v1/chat/completions",
        status=200,
        model=model,
        **kw,
    )


def test_prices_and_usage(db_env: dict[str, str], cli_env: dict[str, str]) -> None:
    env = cli_env
    pid = ok_json(env, "manage", "project", "create", "--name", "t", "--api-key", UPSTREAM_KEY)[
        "id"
    ]
    tid = ok_json(env, "manage", "token", "generate", "--project-id", "t", "--label", "ci")["id"]
    row = ok_json(
        env,
        "manage",
        "prices",
        "set",
        "house-model-7",
        "--input",
        "1.25",
        "--output",
        "2",
        "--cached-input",
        "0.000001",
        "--effective-from",
        "2020-01-01",
    )
    assert (row["input"], row["cached_input"], row["reasoning"]) == ("1.25", "0.000001", None)
    assert "more than 6 decimal places" in fails(
        env, "manage", "prices", "set", "m", "--input", "0.0000001", "--output", "1"
    )
    assert "no project with id or name" in fails(
        env, "manage", "prices", "set", "m", "--input", "1", "--output", "1", "--project-id", "x"
    )
    ok_json(
        env, "manage", "prices", "set", "m", "--input", "3", "--output", "4", "--project-id", "t"
    )
    listed = ok_json(env, "manage", "prices", "list")
    assert {(r["model"], r["project_id"]) for r in listed} == {
        ("house-model-7", None),
        ("m", pid),
    }
    shipped = ok_json(env, "manage", "prices", "list", "--shipped", "--model", "gpt-4o-mini")
    assert [r["source"] for r in shipped] == ["shipped"]

    _record(
        db_env,
        [
            _event(1, pid, tid, "house-model-7", prompt_tokens=1000, completion_tokens=10),
            _event(2, pid, tid, "house-model-7", prompt_tokens=1, cached_tokens=1),
            _event(3, pid, tid, "mystery-1", prompt_tokens=5, completion_tokens=5),
        ],
    )
    unpriced = ok_json(env, "manage", "prices", "unpriced")
    assert [(u["model"], u["requests"]) for u in unpriced] == [("mystery-1", 1)]

    report = ok_json(env, "manage", "usage", "--project-id", "t", "--by", "model", "--since", "1d")
    by_model = {r["model"]: r for r in report["data"]}
    house = by_model["house-model-7"]
    assert (
        Decimal(house["cost_usd"])
        == (1000 * Decimal("1.25") + 10 * 2 + Decimal("0.000001")) / 10**6
    )
    assert (house["requests"], house["cached_tokens"], house["unpriced"]) == (2, 1, 0)
    mystery = by_model["mystery-1"]
    assert (mystery["cost_usd"], mystery["priced_cost_usd"], mystery["unpriced"]) == (None, "0", 1)
    assert report["total"]["cost_usd"] is None  # part of it is unknown
    assert report["total"]["priced_cost_usd"] == house["cost_usd"]
    assert (
        ok_json(env, "manage", "usage", "--token-id", "ci", "--by", "day")["total"]
        == report["total"]
    )
    out = cli(env, "manage", "usage", "--token-id", tid, "--csv")
    assert out.exit_code == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert {r["model"]: r["cost_usd"] for r in rows} == {
        "house-model-7": house["cost_usd"],
        "mystery-1": "",  # unknown, not 0
    }
    assert "exactly one" in fails(env, "manage", "usage")
    assert "exactly one" in fails(env, "manage", "usage", "--project-id", "t", "--token-id", "ci")

    # export, then import the operator's rows (changed) back: all of them or none
    exported = ok_json(env, "manage", "prices", "export")
    mine = [r for r in exported["prices"] if r["source"] == "operator"]
    assert len(exported["prices"]) > len(mine) == 2
    for r in mine:
        r["output"] = "9.5"
    bad = json.dumps({"prices": [*mine, {"model": "x", "input": "1"}]})
    refused = cli(env, "manage", "prices", "import", "-", stdin=bad)
    assert refused.exit_code == 1 and "row 3 of the price file" in refused.stderr
    assert ok_json(env, "manage", "prices", "list")[0]["output"] == "2"
    imported = ok_json(env, "manage", "prices", "import", "-", stdin=json.dumps({"prices": mine}))
    assert imported == {"imported": 2}
    assert {r["output"] for r in ok_json(env, "manage", "prices", "list")} == {"9.5"}
    as_csv = cli(env, "manage", "prices", "export", "--csv")
    assert as_csv.exit_code == 0
    header = as_csv.stdout.splitlines()[0]
    assert (
        header == "model,input,cached_input,output,reasoning,cache_write,effective_from,project_id"
    )
    assert ok_json(env, "manage", "prices", "import", "-", stdin=as_csv.stdout)["imported"] > 2
    audit = ok_json(env, "manage", "audit", "list", "--action", "price.set")
    assert {a["outcome"] for a in audit} == {"success", "failure"}
