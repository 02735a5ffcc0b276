"""`python -m bench.overhead`: does Server-Timing's `proxy;dur` agree with the measured latency?

For each proxy target, N requests one at a time (c=1, one keep-alive connection): the client's
own round-trip time, and the `proxy;dur` / `upstream;dur` of each answer; the same requests
straight to the fake upstream give the floor. The added latency the client sees (target minus
direct) is then set beside `proxy;dur` and beside the mean of the `llm_proxy_overhead_seconds`
histogram read from /metrics. What `proxy;dur` cannot see — the server's HTTP parsing and
writing, the socket system calls, the event loop's wake-ups — is the difference, reported too.
"""

from __future__ import annotations

import argparse
import http.client
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

from bench import procs
from bench.scenarios import SCENARIOS
from bench.targets import TARGETS, Context, Running

_TIMING = re.compile(r"proxy;dur=([0-9.]+), upstream;dur=([0-9.]+)")


def _round_trips(running: Running, path: str, body: bytes | None, n: int) -> dict[str, list[float]]:
    conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if running.auth:
        headers["Authorization"] = running.auth
    method = "POST" if body is not None else "GET"
    total: list[float] = []
    proxy: list[float] = []
    upstream: list[float] = []
    try:
        for i in range(n + 50):
            started = time.perf_counter()
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            elapsed = (time.perf_counter() - started) * 1000
            if resp.status != 200:
                raise RuntimeError(f"{method} {path} answered {resp.status}")
            if i < 50:  # warm-up
                continue
            total.append(elapsed)
            timing = _TIMING.search(resp.getheader("server-timing") or "")
            if timing:
                proxy.append(float(timing.group(1)))
                upstream.append(float(timing.group(2)))
    finally:
        conn.close()
    return {"total": total, "proxy": proxy, "upstream": upstream}


def _histogram_mean_ms(port: int) -> float | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("llm_proxy_overhead_seconds_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("llm_proxy_overhead_seconds_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total / count * 1000 if count else None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__)
    p.add_argument("--targets", default="embedded,production")
    p.add_argument("--scenario", default="chat", choices=["chat", "models", "embeddings"])
    p.add_argument("--requests", type=int, default=2000)
    args = p.parse_args(argv)
    scenario = SCENARIOS[args.scenario]
    body = orjson.dumps(scenario.body) if scenario.body is not None else None
    rows = []
    with tempfile.TemporaryDirectory(prefix="llm-proxy-overhead-") as tmp:
        work = Path(tmp)
        logs = work / "logs"
        logs.mkdir()
        port = procs.free_port()
        argv_up = [sys.executable, "-m", "bench.fake_upstream", "--port", str(port)]
        with procs.running(procs.start("upstream", argv_up, logs, port=port)):
            ctx = Context(upstream_port=port, workdir=work, logs=logs)
            direct = _round_trips(Running(port=port), scenario.path, body, args.requests)
            floor = statistics.median(direct["total"])
            for name in args.targets.split(","):
                running = TARGETS[name].start(ctx)
                try:
                    got = _round_trips(running, scenario.path, body, args.requests)
                    hist = _histogram_mean_ms(running.port)
                finally:
                    running.stop()
                added = statistics.median(got["total"]) - floor
                said = statistics.median(got["proxy"]) if got["proxy"] else float("nan")
                mean_said = statistics.fmean(got["proxy"]) if got["proxy"] else float("nan")
                rows.append((name, added, said, mean_said, hist))
    print(f"{args.scenario}, c=1, {args.requests} requests per target; direct P50 {floor:.3f} ms")
    print(
        "| target | added P50 (client) | proxy;dur P50 | proxy;dur mean "
        "| histogram mean | not seen by proxy;dur |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name, added, said, mean_said, hist in rows:
        shown = f"{hist:.3f}" if hist is not None else "-"
        print(
            f"| {name} | {added:.3f} | {said:.3f} | {mean_said:.3f} | {shown} "
            f"| {added - said:.3f} |"
        )


if __name__ == "__main__":
    main()
