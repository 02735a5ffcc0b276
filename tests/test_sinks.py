"""Export sinks and the retention job, run by a real dramatiq worker on the loopback Redis."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from dispatcher.sinks import Jobs, make_broker, run_worker
from shared.clock import utcnow
from shared.config import Settings
from shared.store import SqlStore
from shared.streams import EVENT_FIELD, StreamKeys
from tests.pipeline_kit import Running, options, seed, wait_for


class Receiver:
    """A webhook endpoint that fails the first ``failures`` POSTs (or all, with -1)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.batches: list[tuple[str, list[dict[str, Any]]]] = []
        self.attempts = 0
        self.auth: set[str] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.attempts += 1
                receiver.auth.add(self.headers.get("Authorization", ""))
                if receiver.failures == -1 or receiver.attempts <= receiver.failures:
                    self.send_response(503)
                    self.end_headers()
                    return
                events = json.loads(body)["events"]
                receiver.batches.append((self.headers["Idempotency-Key"], events))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def event_ids(self) -> set[str]:
        return {e["event_id"] for _, events in self.batches for e in events}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def worker_settings(
    redis_env: dict[str, str], unique_prefix: str, settings: Settings, tmp_path: Path
) -> Settings:
    return settings.replace(
        redis_addr=redis_env["REDIS_ADDR"],
        redis_stream_key=f"{unique_prefix}events",
        event_sink_file=str(tmp_path / "events.jsonl"),
        event_sink_webhook_token=type(settings.management_token)("hook-secret"),
        event_sink_webhook_batch_size=40,
    )


@pytest.fixture
async def redis(worker_settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(f"redis://{worker_settings.redis_addr}")
    yield client
    keys = StreamKeys(worker_settings.redis_stream_key)
    async for name in client.scan_iter(match=keys.helper("*")):
        await client.delete(name)
    await client.delete(keys.stream)
    await client.aclose()


@contextmanager
def worker(settings: Settings) -> Iterator[None]:
    """``llm-proxy worker`` in a thread of this process."""
    stop = threading.Event()
    thread = threading.Thread(
        target=run_worker, args=(settings,), kwargs={"threads": 2, "stop": stop}
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(failures=2)
    yield r
    r.close()


async def test_events_reach_the_file_and_a_flaky_webhook(
    worker_settings: Settings, redis: aioredis.Redis, store: SqlStore, receiver: Receiver
) -> None:
    settings = worker_settings.replace(event_sink_webhook_url=receiver.url)
    owners = await seed(store)
    events = [owners.event(i) for i in range(100)]
    for event in events:
        await redis.xadd(settings.redis_stream_key, {EVENT_FIELD: event.to_bytes()})
    jobs = Jobs(make_broker(settings), settings)
    running = Running(redis, store, options(settings.redis_stream_key), jobs=jobs)
    ids = {e.event_id for e in events}
    path = Path(settings.event_sink_file)
    with worker(settings):
        await wait_for(lambda: _file_has(path, 100), timeout=30, what="100 lines in the file")
        await wait_for(lambda: _true(receiver.event_ids() == ids), timeout=60, what="webhook")
        await running.stop()
    jobs.broker.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert sorted(x["event_id"] for x in lines) == sorted(ids)
    assert receiver.attempts > len(receiver.batches)  # the first POSTs failed and were retried
    assert sum(len(batch) for _, batch in receiver.batches) == 100  # each accepted once
    assert all(len(batch) <= 40 for _, batch in receiver.batches)
    assert receiver.auth == {"Bearer hook-secret"}
    assert running.counter("llm_proxy_dispatcher_export_jobs_total", sink="file") >= 1


async def test_a_sink_that_is_down_never_stalls_the_database_writes(
    worker_settings: Settings, redis: aioredis.Redis, store: SqlStore
) -> None:
    down = Receiver(failures=-1)
    settings = worker_settings.replace(event_sink_webhook_url=down.url, event_sink_file="")
    owners = await seed(store)
    jobs = Jobs(make_broker(settings), settings)
    running = Running(redis, store, options(settings.redis_stream_key), jobs=jobs)
    with worker(settings):
        for i in range(300):
            event = owners.event(i)
            await redis.xadd(settings.redis_stream_key, {EVENT_FIELD: event.to_bytes()})
        await wait_for(lambda: _rows(store, 300), timeout=30, what="300 rows")
        assert await owners.counts(store) == owners.expected
        assert down.attempts > 0 and down.batches == []
        await running.stop()
    jobs.broker.close()
    down.close()


async def test_retention_deletes_only_events_older_than_the_setting(
    worker_settings: Settings, redis: aioredis.Redis, store: SqlStore
) -> None:
    settings = worker_settings.replace(
        request_event_retention_days=7, event_sink_file="", event_sink_webhook_url=""
    )
    owners = await seed(store)
    old = (utcnow() - timedelta(days=10)).timestamp()
    await store.record_events([owners.event(i, ts=old) for i in range(30)])
    await store.record_events([owners.event(i) for i in range(5)])
    jobs = Jobs(make_broker(settings), settings)
    running = Running(redis, store, options(settings.redis_stream_key), jobs=jobs, retention_days=7)
    with worker(settings):
        await wait_for(lambda: _rows(store, 5), timeout=30, what="old events deleted")
        await running.stop()
    jobs.broker.close()
    token = await store.get_token(owners.tokens[0].id)
    assert token is not None and token.request_count > 0  # aggregates are history, kept


async def _file_has(path: Path, n: int) -> bool:
    return path.exists() and len(path.read_text().splitlines()) >= n


async def _rows(store: SqlStore, n: int) -> bool:
    return await store.count_events() == n


async def _true(value: bool) -> bool:
    return value
