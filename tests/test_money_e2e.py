"""Cached-input and reasoning tokens and exact costs, end to end through the embedded default:
a real server, a scripted upstream answering as OpenAI does (chat whole and streamed, the
Responses API streamed), and `llm-proxy manage token usage --json` showing what was recorded."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from admin.cli import app
from tests.proxy_process import UNLIMITED, ProxyProcess, provision
from tests.upstream_script import Reply, ScriptedUpstream, chat_chunk

CHAT_USAGE = {
    "prompt_tokens": 2000,
    "completion_tokens": 300,
    "total_tokens": 2300,
    "prompt_tokens_details": {"cached_tokens": 1536},
    "completion_tokens_details": {"reasoning_tokens": 256},
}
RESPONSES_USAGE = {
    "input_tokens": 1200,
    "input_tokens_details": {"cached_tokens": 1024},
    "output_tokens": 80,
    "output_tokens_details": {"reasoning_tokens": 64},
    "total_tokens": 1280,
}


def _sse(*datas: bytes) -> list[bytes]:
    return [b"data: " + d + b"\n\n" for d in datas]


@pytest.fixture
def upstream() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream().start()
    server.scripts["o4-mini"] = lambda body: Reply(
        [json.dumps({"model": "o4-mini-2025-04-16", "choices": [], "usage": CHAT_USAGE}).encode()],
        content_type="application/json",
    )
    server.scripts["gpt-4.1"] = lambda body: Reply(
        _sse(
            chat_chunk("gpt-4.1-2025-04-14", "hello"),
            chat_chunk("gpt-4.1-2025-04-14", None, CHAT_USAGE),  # type: ignore[arg-type]
            b"[DONE]",
        )
    )
    completed = {
        "type": "response.completed",
        "response": {"model": "o3-2025-04-16", "usage": RESPONSES_USAGE},
    }
    server.scripts["o3"] = lambda body: Reply(
        [
            b"event: response.output_text.delta\n"
            b'data: {"type":"response.output_text.delta","delta":"hi"}\n\n',
            b"event: response.completed\ndata: " + json.dumps(completed).encode() + b"\n\n",
        ]
    )
    server.scripts["house-model-7"] = lambda body: Reply(
        [b'{"model": "house-model-7", "choices": [], "usage": {"prompt_tokens": 3}}'],
        content_type="application/json",
    )
    yield server
    server.stop()


def test_usage_details_and_costs_recorded(
    tmp_path: Path, upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**UNLIMITED, "HTTP_CACHE_ENABLED": "false"}
    cred = provision(env, tmp_path, upstream.base_url)
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=1).start()
    try:
        headers = {"Authorization": f"Bearer {cred.token}"}
        calls: list[tuple[str, dict[str, Any]]] = [
            ("/v1/chat/completions", {"model": "o4-mini", "messages": []}),
            ("/v1/chat/completions", {"model": "gpt-4.1", "messages": [], "stream": True}),
            ("/v1/responses", {"model": "o3", "input": "hi", "stream": True}),
            ("/v1/chat/completions", {"model": "house-model-7", "messages": []}),
        ]
        for i, (path, body) in enumerate(calls):
            with httpx.stream(
                "POST",
                proxy.url + path,
                json=body,
                headers={**headers, "X-Request-ID": f"r{i}"},
                timeout=30,
            ) as response:
                assert response.status_code == 200
                response.read()
        monkeypatch.chdir(tmp_path)  # the embedded database is relative to the server's cwd
        deadline = time.monotonic() + 30
        while True:
            result = CliRunner().invoke(
                app, ["manage", "token", "usage", cred.token_id, "--json"], env=env
            )
            assert result.exit_code == 0, result.output
            out = json.loads(result.stdout)
            if len(out["events"]) == len(calls) and all(e["status"] for e in out["events"]):
                break
            assert time.monotonic() < deadline, f"events not recorded: {out['events']}"
            time.sleep(0.1)
    finally:
        proxy.stop()
    by_id = {e["request_id"]: e for e in out["events"]}
    chat, streamed, responses, house = (by_id[f"r{i}"] for i in range(4))
    for seen in (chat, streamed):
        assert (seen["cached_tokens"], seen["reasoning_tokens"]) == (1536, 256)
    assert (responses["cached_tokens"], responses["reasoning_tokens"]) == (1024, 64)
    # o4-mini: 464 input at $1.10, 1536 cached at $0.275, 300 output at $4.40 per million
    assert (
        Decimal(chat["cost_usd"])
        == (Decimal(464) * Decimal("1.10") + 1536 * Decimal("0.275") + 300 * Decimal("4.40"))
        / 10**6
    )
    assert (
        Decimal(streamed["cost_usd"])
        == (Decimal(464) * 2 + 1536 * Decimal("0.50") + 300 * 8) / 10**6
    )
    assert (
        Decimal(responses["cost_usd"])
        == (Decimal(176) * 2 + 1024 * Decimal("0.5") + 80 * 8) / 10**6
    )
    assert house["cost_usd"] is None  # no price: unknown, never $0
