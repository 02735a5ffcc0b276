"""`python -m bench.overhead`: does Server-Timing's `proxy;dur` agree with the measured latency?

For each proxy target, N requests one at a time (c=1, one keep-alive connection): the client's
own round-trip time, and the `proxy;dur` / `upstream;dur` of each answer; the same requests
straight to the fake upstream give the floor. The added latency the client sees (target minus
direct) is then set beside `proxy;dur` (P50s) and beside the mean of the
`llm_proxy_overhead_seconds` histogram over the same requests, read from /metrics before and
after them (means: the histogram has no exact P50). What neither sees is the difference,
reported too: the kernel's share of the extra loopback hops, and the event loop's wake-ups
before the worker reads the request (docs/performance.md). nginx in front of the same upstream
measures that hop on its own (a proxy that does next to nothing): the proxy's added latency
minus nginx's is what the proxy itself adds, and is set beside `proxy;dur` as well.
"""

from __future__ import annotations

import argparse
import http.client
import re
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

from bench import procs
from bench.scenarios import SCENARIOS
from bench.targets import TARGETS, Context, Running

_TIMING = re.compile(rb"proxy;dur=([0-9.]+), upstream;dur=([0-9.]+)")
_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)")


def _round_trips(
    running: Running, path: str, body: bytes | None, n: int, warmup: int = 50
) -> dict[str, list[float]]:
    """``n`` requests on one keep-alive connection. The client is a bare socket that reads
    only the status, Content-Length and Server-Timing of each answer: a full HTTP client's
    header parsing (http.client's costs tens of microseconds per header) would be counted as
    the proxy's, which sends more headers than the upstream."""
    method = "POST" if body is not None else "GET"
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{running.port}"]
    if running.auth:
        lines.append(f"Authorization: {running.auth}")
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")
    total: list[float] = []
    proxy: list[float] = []
    upstream: list[float] = []
    with socket.create_connection(("127.0.0.1", running.port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending = b""
        for i in range(n + warmup):
            started = time.perf_counter()
            sock.sendall(request)
            head, pending = _read_head(sock, pending)
            length = _LENGTH.search(head)
            if length is None:
                raise RuntimeError(f"{method} {path}: an answer without Content-Length")
            need = int(length.group(1))
            while len(pending) < need:
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError(f"{method} {path}: the connection closed mid-answer")
                pending += chunk
            pending = pending[need:]
            elapsed = (time.perf_counter() - started) * 1000
            if not head.startswith((b"http/1.1 200", b"http/1.0 200")):
                raise RuntimeError(f"{method} {path} answered {head[:12]!r}")
            if i < warmup:
                continue
            total.append(elapsed)
            timing = _TIMING.search(head)
            if timing:
                proxy.append(float(timing.group(1)))
                upstream.append(float(timing.group(2)))
    return {"total": total, "proxy": proxy, "upstream": upstream}


def _read_head(sock: socket.socket, pending: bytes) -> tuple[bytes, bytes]:
    """The next answer's head (lower-cased) and the bytes read past it."""
    while (end := pending.find(b"\r\n\r\n")) < 0:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("the connection closed before an answer's head")
        pending += chunk
    return pending[:end].lower(), pending[end + 4 :]


def _histogram(port: int) -> tuple[float, float]:
    """The overhead histogram's sum (seconds) and count, over every endpoint."""
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
    return total, count


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
            floor_mean = statistics.fmean(direct["total"])
            hop = float("nan")
            if TARGETS["nginx"].unavailable() is None:
                running = TARGETS["nginx"].start(ctx)
                try:
                    via = _round_trips(running, scenario.path, body, args.requests)
                finally:
                    running.stop()
                hop = statistics.median(via["total"]) - floor
            for name in args.targets.split(","):
                running = TARGETS[name].start(ctx)
                try:
                    _round_trips(running, scenario.path, body, 0)  # warm-up only
                    sum_before, count_before = _histogram(running.port)
                    got = _round_trips(running, scenario.path, body, args.requests, warmup=0)
                    sum_after, count_after = _histogram(running.port)
                finally:
                    running.stop()
                count = count_after - count_before
                hist = (sum_after - sum_before) / count * 1000 if count else float("nan")
                added = statistics.median(got["total"]) - floor
                added_mean = statistics.fmean(got["total"]) - floor_mean
                said = statistics.median(got["proxy"]) if got["proxy"] else float("nan")
                mean_said = statistics.fmean(got["proxy"]) if got["proxy"] else float("nan")
                # what the proxy's wait for the upstream took beyond the client's own direct
                # round trip: the proxy's loop noticing the upstream's answer, counted as upstream
                waited = statistics.fmean(got["upstream"]) - floor_mean if got["upstream"] else 0
                rows.append((name, added, said, added_mean, mean_said, hist, waited))
    print(
        f"{args.scenario}, c=1, {args.requests} requests per target; direct P50 {floor:.3f} ms; "
        f"one more hop (nginx's added P50) {hop:.3f} ms"
    )
    print(
        "| target | added P50 (client) | proxy;dur P50 | not seen by proxy;dur (P50s) "
        "| added P50 less the hop | added mean (client) | proxy;dur mean | histogram mean "
        "| not seen by the histogram (means) | upstream;dur mean less direct |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, added, said, added_mean, mean_said, hist, waited in rows:
        print(
            f"| {name} | {added:.3f} | {said:.3f} | {added - said:.3f} | {added - hop:.3f} "
            f"| {added_mean:.3f} | {mean_said:.3f} | {hist:.3f} | {added_mean - hist:.3f} "
            f"| {waited:.3f} |"
        )


if __name__ == "__main__":
    main()
