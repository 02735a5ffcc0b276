"""What partitioning costs Postgres per batch insert: the dispatcher's statement into the
partitioned ``request_events`` and the same statement into a plain copy of the table (the
pre-0014 shape), alternated batch by batch on one connection so a loaded machine's drift
falls on both alike.

    python -m bench.experiments.partition_insert [--batches 200] [--batch 500]

Needs the loopback Postgres (BENCH_POSTGRES_URL, default postgresql://postgres@127.0.0.1/test).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid

import orjson
import psycopg

from bench.dispatcher_throughput import make_event, seed
from shared.store.postgres import _INSERT_EVENTS

ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

_PLAIN = (
    "CREATE TABLE plain_events (LIKE request_events INCLUDING DEFAULTS)",
    "ALTER TABLE plain_events ADD PRIMARY KEY (event_id, ts)",
    "CREATE INDEX ON plain_events (token_id, ts)",
    "CREATE INDEX ON plain_events (project_id, ts)",
    "CREATE INDEX ON plain_events (ts)",
    "CREATE INDEX ON plain_events (trace_id) WHERE trace_id <> ''",
)


def run(url: str, owners: tuple[str, list[str]], batches: int, size: int) -> dict[str, float]:
    times: dict[str, list[float]] = {"partitioned": [], "plain": []}
    statements = {
        "partitioned": _INSERT_EVENTS,
        "plain": _INSERT_EVENTS.replace("request_events", "plain_events"),
    }
    with psycopg.connect(url) as conn:
        for statement in _PLAIN:
            conn.execute(statement)
        conn.commit()
        for i in range(batches):
            for name in ("partitioned", "plain") if i % 2 else ("plain", "partitioned"):
                events = [make_event(owners[0], owners[1], j) for j in range(size)]
                payload = orjson.dumps(events).decode()
                started = time.perf_counter()
                conn.execute(statements[name], (payload,)).fetchall()
                conn.commit()
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t[10:]) * 1e6 / size for name, t in times.items()}


async def main(args: argparse.Namespace) -> None:
    name = f"llmproxy_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rpartition("/")[0] + f"/{name}"
    try:
        owners = await seed(url)
        print(f"load average before: {os.getloadavg()[0]:.2f}")
        result = run(url, owners, args.batches, args.batch)
        for what, us in result.items():
            print(f"{what}: median {us:.1f} µs per event (insert and commit, batch {args.batch})")
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200, help="batches into each table")
    parser.add_argument("--batch", type=int, default=500, help="events per batch")
    asyncio.run(main(parser.parse_args()))
