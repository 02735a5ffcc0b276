"""Dispatcher throughput: events per second into Postgres, at batch sizes 100 and 500.

Two measurements, on a throwaway database and a throwaway stream:

* ``writer``: one batch after another through the store's write path (insert with
  ON CONFLICT, aggregates of the rows inserted, commit), comparing the production ``unnest``
  insert with COPY into a temporary table;
* ``dispatcher``: a stream pre-filled with N events drained by real dispatchers
  (XREADGROUP, decode, write, XACK), timed until every row is in and nothing is pending.

    python bench/dispatcher_throughput.py [--events 100000] [--dispatchers 1]
        [--batches 100,500] [--ours-only]

Needs the loopback Postgres (BENCH_POSTGRES_URL, default postgresql://postgres@127.0.0.1/test)
and Redis (BENCH_REDIS_ADDR, default 127.0.0.1:6379).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
import redis.asyncio as aioredis

from dispatcher.consumer import Dispatcher
from dispatcher.options import Options
from shared.clock import from_epoch, new_id, utcnow
from shared.config import Settings
from shared.events import RequestEvent
from shared.store import Project, Token, make_store
from shared.store.base import EVENT_COLUMNS, Tx
from shared.store.postgres import PostgresStore, _PgTx
from shared.streams import EVENT_FIELD

ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_ADDR = os.environ.get("BENCH_REDIS_ADDR", "127.0.0.1:6379")
TOKENS = 100


class CopyStore(PostgresStore):
    """The alternative measured against ``unnest``: COPY into a temporary table, then one
    INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING."""

    async def insert_events(self, tx: Tx, events: Sequence[RequestEvent]) -> list[RequestEvent]:
        assert isinstance(tx, _PgTx)
        conn = tx.conn
        await conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS stage_events "
            "(LIKE request_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        cur = conn.cursor()
        async with cur.copy(f"COPY stage_events ({EVENT_COLUMNS}) FROM STDIN") as copy:
            for e in events:
                await copy.write_row(
                    (
                        e.event_id,
                        e.request_id,
                        from_epoch(e.ts),
                        e.project_id or None,
                        e.token_id or None,
                        e.method,
                        e.path,
                        e.status,
                        e.model,
                        e.duration_ms,
                        e.upstream_ms,
                        e.ttfb_ms,
                        e.request_bytes,
                        e.response_bytes,
                        e.prompt_tokens,
                        e.completion_tokens,
                        e.total_tokens,
                        e.cache_status,
                        e.stream,
                        e.error,
                        e.client_ip,
                    )
                )
        cur = await conn.execute(
            f"INSERT INTO request_events ({EVENT_COLUMNS}) SELECT {EVENT_COLUMNS} "
            "FROM stage_events ON CONFLICT (event_id, ts) DO NOTHING RETURNING event_id"
        )
        inserted = {row["event_id"] for row in await cur.fetchall()}
        return [e for e in events if e.event_id in inserted]


class UnnestStore(PostgresStore):
    """The first candidate: one array per column, unpacked by unnest."""

    async def insert_events(self, tx: Tx, events: Sequence[RequestEvent]) -> list[RequestEvent]:
        assert isinstance(tx, _PgTx)
        columns = [[getattr(e, name) for e in events] for name in _NAMES]
        ts = columns[2]
        columns[2] = [from_epoch(t) for t in ts]
        columns[3] = [v or None for v in columns[3]]
        columns[4] = [v or None for v in columns[4]]
        cur = await tx.conn.execute(
            f"INSERT INTO request_events ({EVENT_COLUMNS}) SELECT * FROM unnest("
            "%s::uuid[], %s::text[], %s::timestamptz[], %s::uuid[], %s::uuid[], %s::text[], "
            "%s::text[], %s::int4[], %s::text[], %s::float8[], %s::float8[], %s::float8[], "
            "%s::int8[], %s::int8[], %s::int4[], %s::int4[], %s::int4[], %s::text[], "
            "%s::bool[], %s::text[], %s::text[]) ON CONFLICT (event_id, ts) DO NOTHING "
            "RETURNING event_id",
            columns,
        )
        inserted = {row["event_id"] for row in await cur.fetchall()}
        return [e for e in events if e.event_id in inserted]


_NAMES = [c.strip() for c in EVENT_COLUMNS.split(",")]


def make_event(project_id: str, tokens: list[str], i: int) -> RequestEvent:
    return RequestEvent(
        event_id=new_id(),
        request_id=f"req-{uuid.uuid4().hex[:16]}",
        ts=time.time(),
        project_id=project_id,
        token_id=tokens[i % len(tokens)],
        method="POST",
        path="/v1/chat/completions",
        status=200,
        duration_ms=123.4,
        upstream_ms=120.1,
        ttfb_ms=80.2,
        request_bytes=812,
        response_bytes=2310,
        model="gpt-4o-mini",
        prompt_tokens=57,
        completion_tokens=211,
        total_tokens=268,
        cache_status="miss" if i % 5 else "hit",
        stream=bool(i % 2),
        client_ip="10.1.2.3",
    )


async def seed(url: str) -> tuple[str, list[str]]:
    store = make_store(Settings.from_env({"DB_DRIVER": "postgres", "DATABASE_URL": url}))
    await store.open(wait=True)
    await store.migrate()
    now = utcnow()
    project = await store.create_project(
        Project(new_id(), "bench", "https://example.com/v1", "v1.x.y", True, now, now)
    )
    tokens = []
    for i in range(TOKENS):
        token = Token(new_id(), new_id(), "sk-llmp-bnch", project.id, f"t{i}", True, now, now)
        tokens.append((await store.create_token(token)).id)
    await store.close()
    return project.id, tokens


def truncate(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE request_events")


async def bench_writer(
    url: str, store_cls: type[PostgresStore], batch: int, events: int, owners: tuple[str, list[str]]
) -> tuple[float, float]:
    """Events per second, and this process's CPU microseconds per event."""
    truncate(url)
    store = store_cls(url, pool_size=2, min_idle=1)
    await store.open(wait=True)
    batches = [
        [make_event(owners[0], owners[1], i) for i in range(start, start + batch)]
        for start in range(0, events, batch)
    ]
    await store.record_batch(batches[0])  # warm up (connection, plans, temp table)
    started, cpu = time.perf_counter(), time.process_time()
    for chunk in batches[1:]:
        await store.record_batch(chunk)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await store.close()
    return (events - batch) / elapsed, cpu / (events - batch) * 1e6


async def bench_dispatcher(
    url: str,
    batch: int,
    events: int,
    dispatchers: int,
    owners: tuple[str, list[str]],
    store_cls: type[PostgresStore] = PostgresStore,
) -> tuple[float, float]:
    """Events per second draining a pre-filled stream, and CPU microseconds per event of this
    process (all dispatchers run in it: a ceiling of 1e6 / that per dispatcher process)."""
    truncate(url)
    key = f"bench:{uuid.uuid4().hex[:8]}:events"
    redis = aioredis.Redis.from_url(f"redis://{REDIS_ADDR}")
    for start in range(0, events, 5000):
        pipe = redis.pipeline(transaction=False)
        for i in range(start, min(events, start + 5000)):
            pipe.xadd(key, {EVENT_FIELD: make_event(owners[0], owners[1], i).to_bytes()})
        await pipe.execute()
    stores = []
    runners = []
    started, cpu = time.perf_counter(), time.process_time()
    for d in range(dispatchers):
        store = store_cls(url, pool_size=2, min_idle=1)
        await store.open(wait=True)
        stores.append(store)
        options = Options(
            stream_key=key,
            group="bench",
            consumer=f"d{d}",
            batch_size=batch,
            buffer=max(2000, 4 * batch),
            block_ms=100,
        )
        runner = Dispatcher(redis, store, options)
        runners.append((runner, asyncio.create_task(runner.run())))
    check = stores[0]
    while await check.count_events() < events:
        await asyncio.sleep(0.02)
    while int((await redis.xpending(key, "bench"))["pending"]):
        await asyncio.sleep(0.01)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    for runner, task in runners:
        runner.stop()
        await task
    for store in stores:
        await store.close()
    await redis.delete(key)
    await redis.aclose()
    return events / elapsed, cpu / events * 1e6


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    name = f"llmproxy_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rpartition("/")[0] + f"/{name}"
    rows: list[dict[str, Any]] = []
    try:
        owners = await seed(url)
        print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores shared with others)")
        print("| what | batch | events/s (best of runs) | dispatcher CPU µs/event |")
        print("| --- | --- | --- | --- |")
        for batch in (int(b) for b in args.batches.split(",")):
            d = args.dispatchers
            runs: list[tuple[str, Any]] = [
                ("writer, json_to_recordset (ours)", partial(bench_writer, url, PostgresStore)),
                ("writer, unnest of arrays", partial(bench_writer, url, UnnestStore)),
                ("writer, COPY to a temp table", partial(bench_writer, url, CopyStore)),
                (f"dispatcher x{d} (stream to rows, acked)", partial(bench_dispatcher, url)),
                (f"dispatcher x{d} with COPY", partial(bench_dispatcher, url, store_cls=CopyStore)),
            ]
            if args.ours_only:  # the production path alone (before/after comparisons)
                runs = [runs[0], runs[3]]
            for label, run in runs:
                if label.startswith("writer"):
                    work = partial(run, batch=batch, events=args.writer_events, owners=owners)
                else:
                    work = partial(
                        run, batch=batch, events=args.events, dispatchers=d, owners=owners
                    )
                results = [await work() for _ in range(args.runs)]
                rate = max(r for r, _ in results)
                cpu = min(c for _, c in results)
                rows.append({"what": label, "batch": batch, "events_per_s": rate, "cpu_us": cpu})
                print(f"| {label} | {batch} | {rate:,.0f} | {cpu:.1f} |", flush=True)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events per dispatcher run")
    parser.add_argument("--writer-events", type=int, default=50_000, help="events per writer run")
    parser.add_argument("--dispatchers", type=int, default=1, help="dispatchers draining at once")
    parser.add_argument("--runs", type=int, default=3, help="runs of each; the best is shown")
    parser.add_argument("--batches", default="100,500", help="batch sizes, comma-separated")
    parser.add_argument(
        "--ours-only", action="store_true", help="skip the unnest and COPY alternatives"
    )
    asyncio.run(main(parser.parse_args()))
