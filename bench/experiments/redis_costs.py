"""Redis commands per request by feature, and what one event costs, counted on private servers.

The figures behind docs/scaling.md's capacity model: machine-independent counts, not timings.
A private redis-server and a throwaway Postgres database; one real proxy (1 worker) and one
dispatcher; INFO commandstats reset before each phase and read after it.

Run: python -m bench.experiments.redis_costs  (needs redis-server and Postgres on loopback)
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from tempfile import mkdtemp
from typing import Any

import httpx
import psycopg
import redis

from shared.crypto import new_key
from tests.proxy_process import DispatcherProcess, ProxyProcess, provision
from tests.services import RedisProcess, create_database, drop_database
from tests.upstream_fake import FakeUpstream

N = 400


def commandstats(client: redis.Redis) -> dict[str, int]:
    """Calls per command, and ``server µs``: Redis's own time in commands (this machine's)."""
    stats = client.info("commandstats")
    out = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
    out["server µs"] = sum(
        int(v["usec"])
        for k, v in stats.items()
        if k not in ("cmdstat_info", "cmdstat_config|resetstat")
    )
    return out


def phase(client: redis.Redis, run: Any) -> dict[str, float]:
    client.config_resetstat()
    run()
    time.sleep(1.0)  # the bus's linger and the dispatcher's read
    stats = commandstats(client)
    stats.pop("config|resetstat", None)
    stats.pop("info", None)
    return {k: round(v / N, 3) for k, v in sorted(stats.items())}


def main() -> None:
    work = Path(mkdtemp(prefix="redis-costs-"))
    server = RedisProcess().start()
    fake = FakeUpstream().start()
    db_url = create_database()
    client = redis.Redis(host="127.0.0.1", port=server.port)
    base = {
        "DB_DRIVER": "postgres",
        "DATABASE_URL": db_url,
        "ENCRYPTION_KEY": new_key(),
        "REDIS_ADDR": server.addr,
        "LLM_PROXY_EVENT_BUS": "redis-streams",
        "EVENT_SPOOL_DIR": str(work / "spool"),
        "GLOBAL_RATE_LIMIT": "0",
        "IP_RATE_LIMIT": "0",
    }
    features = {
        "events only": {},
        "events + limits (global, IP, token window)": {
            "DISTRIBUTED_RATE_LIMIT_ENABLED": "true",
            "GLOBAL_RATE_LIMIT": "10000000",
            "IP_RATE_LIMIT": "10000000",
        },
        "events + redis cache (miss, not cacheable)": {"HTTP_CACHE_BACKEND": "redis"},
    }
    results: dict[str, Any] = {}
    try:
        cred = provision(base, work, fake.base_url, rpm=10_000_000)
        for name, extra in features.items():
            env = {**base, **extra}
            proxy = ProxyProcess(env=env, cwd=work, workers=1).start()
            try:
                auth = {"Authorization": f"Bearer {cred.token}"}
                with httpx.Client(timeout=30) as http:

                    def chat(
                        http: httpx.Client = http, auth: dict[str, str] = auth, url: str = proxy.url
                    ) -> None:
                        for i in range(N):
                            http.post(
                                f"{url}/v1/chat/completions",
                                headers={**auth, "X-Request-ID": f"{uuid.uuid4()}-{i}"},
                                json={"model": "gpt-fake", "messages": []},
                            )

                    results[f"chat: {name}"] = phase(client, chat)
                    if "cache" in name:
                        http.get(f"{proxy.url}/v1/models?warm=1", headers=auth)

                        def hits(
                            http: httpx.Client = http,
                            auth: dict[str, str] = auth,
                            url: str = proxy.url,
                        ) -> None:
                            for _ in range(N):
                                http.get(f"{url}/v1/models?warm=1", headers=auth)

                        results[f"GET hit: {name}"] = phase(client, hits)
            finally:
                proxy.stop()
        before = int(client.xlen("llm-proxy-events"))
        dispatcher = DispatcherProcess(env={**base, "DISPATCHER_BATCH_SIZE": "100"}, cwd=work)
        client.config_resetstat()
        dispatcher.start()
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                with psycopg.connect(db_url) as conn:
                    row = conn.execute("SELECT count(*) FROM request_events").fetchone()
                if row is not None and int(row[0]) >= before:
                    break
                time.sleep(0.5)
            time.sleep(2.0)
        finally:
            dispatcher.stop()
        stats = commandstats(client)
        results["dispatcher per event (batch 100)"] = {
            k: round(v / before, 4) for k, v in sorted(stats.items()) if k != "config|resetstat"
        }
        entry = client.xrange("llm-proxy-events", count=1)[0][1][b"e"]
        with psycopg.connect(db_url) as conn:
            size = conn.execute(  # the parent holds nothing itself: its partitions do
                "SELECT (SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits "
                "WHERE inhparent = 'request_events'::regclass), count(*) FROM request_events"
            ).fetchone()
        assert size is not None
        results["per event"] = {
            "events": before,
            "stream entry payload bytes": len(entry),
            "request_events bytes per row (table + indexes)": round(size[0] / max(1, size[1])),
        }
    finally:
        fake.stop()
        server.stop()
        drop_database(db_url)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
