"""`manage token show` / `manage project show` (and the API's GET of a token or project) report
each budget's spend, its reservations in flight and what is left in the current window: through
the CLI as JSON and as tables, and through the management API, held to its published schema."""

from __future__ import annotations

import json
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from admin.cli import app
from tests.manage_client import Api
from tests.proxy_process import UNLIMITED, ProxyProcess, provision
from tests.upstream_script import Reply, ScriptedUpstream, chat_chunk

USAGE = {
    "prompt_tokens": 20,
    "completion_tokens": 30,
    "total_tokens": 50,
    "prompt_tokens_details": {"cached_tokens": 5},
}
# $1 / $2 / $0.5 (cached) per million: 15 x 1 + 5 x 0.5 + 30 x 2 micro-dollars
COST = Decimal("0.0000775")


def _cli(env: dict[str, str], *args: str, as_json: bool = True) -> Any:
    done = CliRunner().invoke(app, [*args, "--json"] if as_json else list(args), env=env)
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout) if as_json else done.stdout


def _budget(shown: dict[str, Any], kind: str = "budget") -> dict[str, Any]:
    found = [b for b in shown["budgets"] if b["kind"] == kind]
    assert len(found) == 1, shown["budgets"]
    return found[0]


def _chat(url: str, token: str, model: str) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions",
        json={"model": model, "messages": [], "max_tokens": 40, "stream": True},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def test_show_reports_spend_reserved_and_remaining(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = ScriptedUpstream().start()
    stream = [
        b"data: " + chat_chunk("priced", "hello") + b"\n\n",
        b"data: " + chat_chunk("priced", None, USAGE) + b"\n\n",  # type: ignore[arg-type]
        b"data: [DONE]\n\n",
    ]
    upstream.scripts["priced"] = lambda body: Reply(list(stream))
    upstream.scripts["held"] = lambda body: Reply(list(stream), hold_after=1)
    env = {**UNLIMITED, "HTTP_CACHE_ENABLED": "false", "MANAGEMENT_TOKEN": "mgmt-" + "x" * 32}
    cred = provision(
        env, tmp_path, upstream.base_url, budget_usd="5", budget_tokens=100_000, tpm=50_000
    )
    monkeypatch.chdir(tmp_path)
    for model in ("priced", "held"):
        price = ["manage", "prices", "set", model, "--input", "1", "--output", "2"]
        _cli(env, *price, "--cached-input", "0.5", "--effective-from", "2020-01-01")
    _cli(env, "manage", "project", "update", cred.project_id, "--budget-usd", "10.5")
    fresh = _cli(env, "manage", "token", "show", cred.token_id)
    assert _budget(fresh)["spent_usd"] == "0" and _budget(fresh)["remaining_usd"] == "5"
    assert _budget(fresh, "tpm")["remaining_tokens"] == 50_000
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=1).start()
    held: threading.Thread | None = None
    try:
        for _ in range(3):
            assert _chat(proxy.url, cred.token, "priced").status_code == 200
        # a request in flight holds its estimate as reserved, and counts as used
        held = threading.Thread(target=_chat, args=(proxy.url, cred.token, "held"))
        held.start()
        assert upstream.held.wait(30)
        during = _budget(_cli(env, "manage", "token", "show", cred.token_id))
        assert Decimal(during["reserved_usd"]) > 0 and during["reserved_tokens"] > 40
        used = Decimal(during["spent_usd"]) + Decimal(during["reserved_usd"])
        assert Decimal(during["used_usd"]) == used
        assert Decimal(during["remaining_usd"]) == 5 - used
        upstream.release.set()
        held.join(30)
        deadline = time.monotonic() + 30
        while True:  # the held request settles when it ends
            token = _cli(env, "manage", "token", "show", cred.token_id)
            if _budget(token)["reserved_tokens"] == 0:
                break
            assert time.monotonic() < deadline, token["budgets"]
            time.sleep(0.05)
        mine = _budget(token)
        assert (mine["owner"], mine["window"], mine["mode"]) == ("token", "1mo", "hard")
        assert Decimal(mine["spent_usd"]) == Decimal(mine["used_usd"]) == 4 * COST
        assert Decimal(mine["remaining_usd"]) == 5 - 4 * COST
        assert (mine["spent_tokens"], mine["remaining_tokens"]) == (200, 100_000 - 200)
        assert mine["reserved_usd"] == "0"
        tpm = _budget(token, "tpm")
        assert (tpm["limit_tokens"], tpm["window"], tpm["limit_usd"]) == (50_000, "1m", None)
        assert tpm["remaining_usd"] is None
        project = _cli(env, "manage", "project", "show", cred.project_id)
        theirs = _budget(project)
        assert theirs["owner"] == "project" and theirs["limit_usd"] == "10.5"
        assert Decimal(theirs["spent_usd"]) == 4 * COST
        assert Decimal(theirs["remaining_usd"]) == Decimal("10.5") - 4 * COST
        assert theirs["limit_tokens"] is None and theirs["remaining_tokens"] is None
        # the same figures as tables
        table = _cli(env, "manage", "token", "show", cred.token_id, as_json=False)
        assert (
            "budgets:\n  token budget, 1mo rolling, hard: $0.00031 spent + $0 reserved of $5"
            in table
        )
        assert "200 + 0 tokens of 100000, 99800 left" in table
        table = _cli(env, "manage", "project", "show", cred.project_id, as_json=False)
        assert "budgets:" in table and "upstreams:" in table and "10.5" in table
        # and through the management API, each reply checked against its schema
        api = Api(proxy.url, env["MANAGEMENT_TOKEN"])
        try:
            assert _figures(api.ok("GET", f"/tokens/{cred.token_id}")) == _figures(token)
            assert _figures(api.ok("GET", f"/projects/{cred.project_id}")) == _figures(project)
        finally:
            api.close()
    finally:
        upstream.release.set()
        if held is not None:
            held.join(30)
        proxy.stop()
        upstream.stop()


def _figures(shown: dict[str, Any]) -> list[dict[str, Any]]:
    """The budgets without the times (a window may roll between two reads)."""
    return [
        {k: v for k, v in b.items() if k not in ("window_start", "resets_at")}
        for b in shown["budgets"]
    ]
