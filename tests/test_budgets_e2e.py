"""Budgets through the embedded server: a soft budget flags and audits instead of refusing, a
token's TPM refuses with tpm_exceeded, a model without a price cannot pass a hard dollar
budget, a client that disconnects mid-stream is settled, `show` reports the fields, and the
token reads its own usage and what is left at GET /v1/usage, with OpenAI's rate-limit headers."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from admin.cli import app
from tests.proxy_process import UNLIMITED, ProxyProcess, provision
from tests.upstream_script import Reply, ScriptedUpstream, chat_chunk

USAGE = {"prompt_tokens": 20, "completion_tokens": 30, "total_tokens": 50}


@pytest.fixture
def upstream() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream().start()
    stream = [
        b"data: " + chat_chunk("priced", "hello") + b"\n\n",
        b"data: " + chat_chunk("priced", None, USAGE) + b"\n\n",  # type: ignore[arg-type]
        b"data: [DONE]\n\n",
    ]
    server.scripts["priced"] = lambda body: Reply(list(stream))
    server.scripts["held"] = lambda body: Reply(list(stream), hold_after=1)
    server.scripts["unpriced"] = lambda body: Reply(list(stream))
    yield server
    server.stop()


def _cli(env: dict[str, str], *args: str) -> dict[str, object]:
    done = CliRunner().invoke(app, [*args, "--json"], env=env)
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _chat(url: str, token: str, model: str, **kw: object) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions",
        json={"model": model, "messages": [], "max_tokens": 40, "stream": True, **kw},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def _held(db: Path, owner: str) -> tuple[int, int]:
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT COALESCE(SUM(reserved_picos), 0), COALESCE(SUM(reserved_tokens), 0) "
            "FROM budget_buckets WHERE owner_id = ?",
            (owner,),
        ).fetchone()
    return int(row[0]), int(row[1])


def test_budget_behaviours(
    tmp_path: Path, upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**UNLIMITED, "HTTP_CACHE_ENABLED": "false"}
    soft = provision(
        env, tmp_path, upstream.base_url, budget_usd="0.000001", budget_mode="soft", label="soft"
    )
    monkeypatch.chdir(tmp_path)
    _cli(
        env,
        "manage",
        "prices",
        "set",
        "priced",
        "--input",
        "1",
        "--output",
        "2",
        "--effective-from",
        "2020-01-01",
    )
    _cli(
        env,
        "manage",
        "prices",
        "set",
        "held",
        "--input",
        "1",
        "--output",
        "2",
        "--effective-from",
        "2020-01-01",
    )
    hard = _cli(
        env,
        "manage",
        "token",
        "generate",
        "--project-id",
        soft.project_id,
        "--budget-usd",
        "5",
        "--budget-window",
        "5h",
        "--budget-calendar",
        "--tpm",
        "120",
        "--rpm",
        "100",
    )
    assert (hard["budget_usd"], hard["budget_window"], hard["budget_calendar"]) == ("5", "5h", True)
    assert hard["tpm"] == 120 and hard["budget_mode"] is None
    shown = _cli(env, "manage", "token", "show", "soft")
    assert (shown["budget_usd"], shown["budget_mode"]) == ("0.000001", "soft")
    bad = CliRunner().invoke(
        app, ["manage", "token", "update", "soft", "--budget-usd", "-1"], env=env
    )
    assert bad.exit_code == 1 and "budget usd must be a positive amount" in bad.stderr
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=1).start()
    db = tmp_path / "llm-proxy.db"
    try:
        # soft: over budget after the first request, still served, flagged and audited
        first = _chat(proxy.url, soft.token, "priced")
        assert first.status_code == 200 and "x-llm-proxy-budget-exceeded" not in first.headers
        assert first.headers["x-llm-proxy-budget-remaining-usd"] == "0.000001"
        second = _chat(proxy.url, soft.token, "priced")
        assert second.status_code == 200
        assert second.headers["x-llm-proxy-budget-exceeded"] == "soft"
        assert second.headers["x-llm-proxy-budget-remaining-usd"] == "0"
        audit = _cli(env, "manage", "audit", "list", "--action", "budget.soft_exceeded")
        assert [a["target_id"] for a in audit] == [soft.token_id]
        # TPM: the reservation (the body's bytes + max_tokens) counts until settled, then the
        # actual 50 tokens a request; 120 a minute lets a few through, then refuses
        replies = [_chat(proxy.url, str(hard["token"]), "priced") for _ in range(4)]
        statuses = [r.status_code for r in replies]
        assert statuses[0] == 200 and statuses[-1] == 429
        first_headers = replies[0].headers
        assert first_headers["x-ratelimit-limit-tokens"] == "120"
        assert first_headers["x-ratelimit-remaining-tokens"] == "120"
        assert first_headers["x-ratelimit-reset-tokens"].endswith("s")
        assert first_headers["x-ratelimit-limit-requests"] == "100"
        assert first_headers["x-ratelimit-remaining-requests"] == "99"
        assert first_headers["x-llm-proxy-budget-remaining-usd"] == "5"
        # the token asks the proxy what it has used and what is left
        served = statuses.count(200)
        deadline = time.monotonic() + 30
        while True:
            mine = httpx.get(
                proxy.url + "/v1/usage",
                headers={"Authorization": f"Bearer {hard['token']}"},
                timeout=30,
            )
            assert mine.status_code == 200, mine.text
            usage = mine.json()
            # (its own GET /v1/usage calls are requests too, of no model)
            if usage["by_model"].get("priced", {}).get("requests") == served:
                break
            assert time.monotonic() < deadline, usage
            time.sleep(0.05)
        assert usage["token_id"] == hard["id"]
        assert usage["by_model"]["priced"]["prompt_tokens"] == 20 * served
        assert usage["by_model"]["priced"]["cost_usd"] == str(Decimal(20 + 60) * served / 10**6)
        kinds = {(b["owner"], b["kind"]): b for b in usage["budgets"]}
        budget = kinds[("token", "budget")]
        assert (budget["limit_usd"], budget["window"], budget["calendar"]) == ("5", "5h", True)
        assert Decimal(budget["remaining_usd"]) == 5 - Decimal(80 * served) / 10**6
        assert kinds[("token", "tpm")]["limit_tokens"] == 120
        assert httpx.get(proxy.url + "/v1/usage", timeout=30).status_code == 401
        refused = _chat(proxy.url, str(hard["token"]), "priced")
        assert refused.json()["error"]["code"] == "tpm_exceeded"
        assert int(refused.headers["retry-after"]) >= 1
        # a model without a price cannot be held to a hard dollar budget
        other = provision(env, tmp_path, upstream.base_url, name="q", budget_usd="10")
        unknown = _chat(proxy.url, other.token, "unpriced")
        assert unknown.status_code == 429
        assert unknown.json()["error"]["code"] == "budget_exceeded"
        # a client gone mid-stream: its reservation is settled all the same
        with httpx.stream(
            "POST",
            proxy.url + "/v1/chat/completions",
            json={"model": "held", "messages": [], "max_tokens": 40, "stream": True},
            headers={"Authorization": f"Bearer {other.token}"},
            timeout=30,
        ) as reply:
            assert reply.status_code == 200
            assert upstream.held.wait(30)
            assert _held(db, other.token_id) != (0, 0)
        upstream.release.set()
        deadline = time.monotonic() + 30
        while _held(db, other.token_id) != (0, 0):
            assert time.monotonic() < deadline, "the reservation was never settled"
            time.sleep(0.05)
        metrics = httpx.get(proxy.url + "/metrics", timeout=30).text
        mine = [ln for ln in metrics.splitlines() if f'project="{soft.project_id}"' in ln]
        assert any(
            ln.startswith("llm_proxy_tokens_total{") and 'kind="prompt"' in ln for ln in mine
        )
        assert any(ln.startswith("llm_proxy_cost_usd_total{") for ln in mine)
        assert "llm_proxy_budget_soft_exceeded_total 1.0" in metrics
        assert 'llm_proxy_rejected_requests_total{reason="tpm_exceeded"}' in metrics
    finally:
        upstream.release.set()
        proxy.stop()
