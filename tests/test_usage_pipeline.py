"""Usage flags on the production path: proxies publish to a Redis stream, a dispatcher writes
Postgres; absurd upstream figures are clamped and flagged without stopping recording, estimates
are flagged, and `llm-proxy manage token usage --json` shows where each figure came from."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
from typer.testing import CliRunner

from admin.cli import app
from tests.proxy_process import (
    DispatcherProcess,
    ProxyProcess,
    production_env,
    provision,
)
from tests.services import RedisProcess, create_database, drop_database, require
from tests.upstream_script import Reply, ScriptedUpstream

ABSURD = {"prompt_tokens": 2**64 - 1, "completion_tokens": 999_999_999, "total_tokens": -1}


def test_absurd_usage_and_estimates_on_the_redis_bus_and_dispatcher(tmp_path: Path) -> None:
    require("PostgreSQL", "127.0.0.1", 5432)
    db_url = create_database()
    (tmp_path / "redis").mkdir()
    redis = RedisProcess(data_dir=str(tmp_path / "redis")).start()
    upstream = ScriptedUpstream().start()
    env = production_env(
        db_url,
        redis.addr,
        HTTP_CACHE_ENABLED="false",
        EVENT_SPOOL_DIR=str(tmp_path / "spool"),
    )
    upstream.scripts["absurd"] = lambda body: Reply(
        [json.dumps({"model": "absurd", "choices": [], "usage": ABSURD}).encode()],
        content_type="application/json",
    )
    upstream.scripts["silent"] = lambda body: Reply(
        [b'{"model": "silent", "choices": [{"message": {"content": "12345678"}}]}'],
        content_type="application/json",
    )
    creds = provision(env, tmp_path, upstream.base_url)
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=1).start()
    dispatcher = DispatcherProcess(env=env, cwd=tmp_path).start()
    try:
        headers = {"Authorization": f"Bearer {creds.token}"}
        for i, model in enumerate(["absurd", "absurd", "silent", "absurd"]):
            response = httpx.post(
                proxy.url + "/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": "p" * 40}]},
                headers={**headers, "X-Request-ID": f"r{i}"},
                timeout=30,
            )
            assert response.status_code == 200
        runner_env = {k: env[k] for k in ("DB_DRIVER", "DATABASE_URL", "ENCRYPTION_KEY")}
        deadline = time.monotonic() + 30
        while True:
            result = CliRunner().invoke(
                app, ["manage", "token", "usage", creds.token_id, "--json"], env=runner_env
            )
            assert result.exit_code == 0, result.output
            out = json.loads(result.stdout)
            if len(out["events"]) == 4:
                break
            assert time.monotonic() < deadline, f"events not recorded: {out['events']}"
            time.sleep(0.1)
        by_id = {e["request_id"]: e for e in out["events"]}
        for rid in ("r0", "r1", "r3"):
            event = by_id[rid]
            assert event["usage_source"] == "clamped"
            assert (event["prompt_tokens"], event["completion_tokens"]) == (10**9, 999_999_999)
        silent = by_id["r2"]
        assert silent["usage_source"] == "estimated"
        assert (silent["prompt_tokens"], silent["completion_tokens"]) == (11, 2)
        assert out["token"]["prompt_tokens"] == 3 * 10**9 + 11
        assert out["token"]["completion_tokens"] == 3 * 999_999_999 + 2
    finally:
        dispatcher.stop()
        proxy.stop()
        upstream.stop()
        redis.stop()
        drop_database(db_url)
