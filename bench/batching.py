"""`python -m bench.batching`: what embeddings batching saves and costs, at several windows.

Starts the fake upstream and, for each window, the embedded proxy with BATCHING_ENABLED (window
0 = batching off), drives concurrent embeddings requests and reports requests/s, P50/P99 and
upstream calls per client request. The last is read from the answers themselves: a request served
by a merged call of N carries ``x-llm-proxy-batch: N``, so the calls are the sum of 1/N.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench import procs
from bench.targets import (
    EMBEDDED_ENV,
    PROXY_SERVER,
    Context,
    base_env,
    fill,
    issue_token,
)

BODY = b'{"model": "text-embedding-3-small", "input": "The quick brown fox jumps over the dog"}'


async def drive(port: int, auth: str, concurrency: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    calls = 0.0
    errors = 0
    url = f"http://127.0.0.1:{port}/v1/embeddings"
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    deadline = time.monotonic() + seconds

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal calls, errors
        while time.monotonic() < deadline:
            started = time.perf_counter()
            async with session.post(url, data=BODY, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    errors += 1
                    continue
                calls += 1 / int(resp.headers.get("x-llm-proxy-batch", "1"))
            latencies.append((time.perf_counter() - started) * 1000)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        begun = time.monotonic()
        await asyncio.gather(*(one(session) for _ in range(concurrency)))
        elapsed = time.monotonic() - begun
    latencies.sort()
    done = len(latencies)
    return {
        "requests": done,
        "rps": done / elapsed,
        "p50_ms": statistics.median(latencies) if latencies else 0.0,
        "p99_ms": latencies[int(done * 0.99) - 1] if done >= 100 else max(latencies, default=0),
        "calls_per_request": calls / done if done else 0.0,
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.batching", description=__doc__)
    p.add_argument("--windows", default="0,2,10,50", help="BATCH_WINDOW_MS values; 0 = off")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--max-size", type=int, default=10, help="BATCH_MAX_SIZE")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="llm-proxy-batching-") as tmp:
        work = Path(tmp)
        logs = work / "logs"
        logs.mkdir()
        up_port = procs.free_port()
        upstream = procs.start(
            "upstream",
            [sys.executable, "-m", "bench.fake_upstream", "--port", str(up_port)],
            logs,
            port=up_port,
        )
        with procs.running(upstream):
            for window in (int(w) for w in args.windows.split(",")):
                ctx = Context(upstream_port=up_port, workdir=work, logs=logs)
                cwd = work / f"w{window}"
                cwd.mkdir()
                port = procs.free_port()
                env = {**base_env(), **fill(EMBEDDED_ENV, {"port": str(port)})}
                env["WORKERS"] = "1"
                if window:
                    env.update(
                        BATCHING_ENABLED="true",
                        BATCH_WINDOW_MS=str(window),
                        BATCH_MAX_SIZE=str(args.max_size),
                    )
                auth = issue_token(ctx, env, cwd)
                server = procs.start(
                    f"proxy-w{window}",
                    PROXY_SERVER,
                    logs,
                    env=env,
                    port=port,
                    cwd=cwd,
                    inherit=False,
                )
                with procs.running(server):
                    asyncio.run(drive(port, auth, 4, 1.0))  # warm up
                    figures = asyncio.run(drive(port, auth, args.concurrency, args.duration))
                rows.append((window, figures))
    base = rows[0][1] if rows and rows[0][0] == 0 else None
    print(f"embeddings, c={args.concurrency}, BATCH_MAX_SIZE={args.max_size}, 1 worker")
    print(
        "| BATCH_WINDOW_MS | requests/s | P50 ms | P99 ms | added P50 ms "
        "| upstream calls per request |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for window, f in rows:
        added = f"{f['p50_ms'] - base['p50_ms']:+.2f}" if base is not None else "-"
        label = "off" if window == 0 else str(window)
        print(
            f"| {label} | {f['rps']:.0f} | {f['p50_ms']:.2f} | {f['p99_ms']:.2f} | {added} "
            f"| {f['calls_per_request']:.3f} |"
        )


if __name__ == "__main__":
    main()
