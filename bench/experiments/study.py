"""The upstream-client study: each proxy variant under gunicorn (2 uvicorn workers), driven by wrk.

Run: python -m bench.experiments.study --duration 8 --repeats 3
Rounds interleave the variants (round 1: every variant, round 2: every variant, ...) so a burst of
load from elsewhere on the machine lands on all of them; the table gives the median over rounds.
Results: bench/results/clients-<time>.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import orjson

from bench import procs, wrk
from bench.procs import ROOT
from bench.scenarios import Sampler

VARIANTS = {
    # name: (EXP_APP, EXP_CLIENT)
    "server only: raw ASGI": ("trivial-asgi", ""),
    "server only: Starlette": ("trivial-starlette", ""),
    "Starlette + aiohttp": ("starlette", "aiohttp"),
    "Starlette + httpx": ("starlette", "httpx"),
    "Starlette + raw client": ("starlette", "raw"),
    "raw ASGI + aiohttp": ("asgi", "aiohttp"),
    "raw ASGI + httpx": ("asgi", "httpx"),
    "raw ASGI + raw client": ("asgi", "raw"),
}
BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}]}'


def start_variant(name: str, upstream: int, logs: Path) -> procs.Proc:
    shape, client = VARIANTS[name]
    port = procs.free_port()
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "-w",
        "2",
        "-k",
        "uvicorn_worker.UvicornWorker",
        "-b",
        f"127.0.0.1:{port}",
        "--backlog",
        "4096",
        "bench.experiments.proxy_app:app",
    ]
    env = {"EXP_APP": shape, "EXP_CLIENT": client, "EXP_UPSTREAM": f"http://127.0.0.1:{upstream}"}
    slug = name.replace(" ", "_").replace(":", "").replace("+", "")
    proc = procs.start(slug, argv, logs, env=env, port=port)
    time.sleep(1.0)  # both workers up, not just the first
    return proc


def measure(
    port: int, duration: float, body_file: Path, levels: list[int], pids: list[int]
) -> dict[str, object]:
    """wrk at each level; with the proxy's pids, also its CPU time per request."""
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    wrk.run(url, 16, 1, "POST", body_file)  # warm-up: pools filled, code paths hot
    out: dict[str, object] = {}
    for c in levels:
        with Sampler(pids) as sampler:
            result = asdict(wrk.run(url, c, duration, "POST", body_file))
        if pids:
            result["cpu_us_per_request"] = round(sampler.cpu_seconds * 1e6 / result["requests"], 1)
        out[f"c{c}"] = result
    return out


def stream_check(port: int) -> dict[str, object]:
    """Stream pass-through: c=16 for 3 s; frames must arrive spaced as the upstream sent them."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.streams",
            "load",
            "-c",
            "16",
            "-d",
            "3",
            "--url",
            f"http://127.0.0.1:{port}/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return dict(orjson.loads(done.stdout))


def median_table(runs: dict[str, list[dict[str, object]]], levels: list[int]) -> str:
    head = "| variant | " + " | ".join(
        f"c={c} req/s median (best) | c={c} P50 / P99 ms | c={c} CPU µs/req" for c in levels
    )
    lines = [head + " |", "|---" * (1 + 3 * len(levels)) + "|"]
    for name, rounds in runs.items():
        cells = [name]
        for c in levels:
            rs = [r[f"c{c}"] for r in rounds]
            rps = statistics.median(x["rps"] for x in rs)  # type: ignore[index]
            best = max(x["rps"] for x in rs)  # type: ignore[index]
            p50 = statistics.median(x["p50_ms"] for x in rs)  # type: ignore[index]
            p99 = statistics.median(x["p99_ms"] for x in rs)  # type: ignore[index]
            errors = sum(x["errors"] for x in rs)  # type: ignore[index]
            cpu = [x["cpu_us_per_request"] for x in rs if "cpu_us_per_request" in x]  # type: ignore[operator,index]
            cells += [
                f"{rps:,.0f} ({best:,.0f})" + (f" ({errors} err)" if errors else ""),
                f"{p50:.2f} / {p99:.2f}",
                f"{statistics.median(cpu):.0f}" if cpu else "–",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--levels", default="1,16,64")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names")
    parser.add_argument("--no-streams", action="store_true")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    names = ["direct", *[n.strip() for n in args.variants.split(",")]]
    logs = Path(tempfile.mkdtemp(prefix="bench-clients-"))
    body_file = logs / "body.json"
    body_file.write_bytes(BODY)
    up_port = procs.free_port()
    upstream = procs.start(
        "upstream",
        [
            sys.executable,
            "-m",
            "bench.fake_upstream",
            "--port",
            str(up_port),
            "--workers",
            "2",
            "--chunk-delay-ms",
            "20",
        ],
        logs,
        port=up_port,
    )
    runs: dict[str, list[dict[str, object]]] = {n: [] for n in names}
    streams: dict[str, dict[str, object]] = {}
    with procs.running(upstream):
        for r in range(args.repeats):
            for name in names:
                print(f"round {r + 1}/{args.repeats}: {name}", file=sys.stderr, flush=True)
                if name == "direct":
                    runs[name].append(measure(up_port, args.duration, body_file, levels, []))
                    if r == 0 and not args.no_streams:
                        streams[name] = stream_check(up_port)
                    continue
                with procs.running(start_variant(name, up_port, logs)) as proc:
                    runs[name].append(
                        measure(proc.port, args.duration, body_file, levels, proc.pids())
                    )
                    if r == 0 and not args.no_streams and not name.startswith("server only"):
                        streams[name] = stream_check(proc.port)
    table = median_table(runs, levels)
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    out = results / f"clients-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_bytes(orjson.dumps({"runs": runs, "streams": streams}, option=orjson.OPT_INDENT_2))
    print(table)
    print()
    print(
        "| variant | streams/s | TTFB P50 / P99 ms | total P50 ms | largest gap max ms | errors |"
    )
    print("|---|---|---|---|---|---|")
    for name, s in streams.items():
        t, tot, gap = s["ttfb_ms"], s["total_ms"], s["max_gap_ms"]
        print(
            f"| {name} | {s['streams_per_s']} | {t['p50']} / {t['p99']} | {tot['p50']} | "  # type: ignore[index]
            f"{gap['max']} | {s['errors']} |"  # type: ignore[index]
        )
    print(f"\nraw results: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
