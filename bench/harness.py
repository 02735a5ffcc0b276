"""`bench/run`: start the fake upstream and each target on loopback, run the scenarios, report.

Writes bench/results/run-<time>.json and .md (and prints the Markdown). See docs/performance.md.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench import procs, report, wrk
from bench.scenarios import SCENARIOS, Sampler, Scenario, measure, median_of, soak
from bench.targets import TARGETS, Context, Running

DEFAULT_TARGETS = ("direct", "nginx", "embedded", "production")


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return (
        f"{os.cpu_count()} cores, {model}, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def warm_up(running: Running, scenarios: list[Scenario]) -> None:
    """One request per scenario: fills pools and caches, and fails early with a clear message."""
    conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
    try:
        for s in scenarios:
            headers = {"Content-Type": "application/json"}
            if running.auth:
                headers["Authorization"] = running.auth
            body = orjson.dumps(s.body) if s.body is not None else None
            for _ in range(3):
                conn.request(s.method, s.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.status != 200:
                    raise RuntimeError(
                        f"{s.method} {s.path} answered {resp.status}: {data[:300]!r}"
                    )
    finally:
        conn.close()


def rss_mb(running: Running) -> float | None:
    pids = running.pids()
    return round(sum(procs.rss_bytes(pids).values()) / 2**20, 1) if pids else None


def run_target(
    name: str,
    ctx: Context,
    scenarios: list[Scenario],
    args: argparse.Namespace,
    upstream: list[int],
) -> dict[str, Any]:
    target = TARGETS[name]
    entry: dict[str, Any] = {"about": target.about}
    reason = target.unavailable()
    if reason:
        print(f"skipping {name}: {reason}", file=sys.stderr)
        return {**entry, "status": "skipped", "reason": reason}
    print(f"starting {name}", file=sys.stderr, flush=True)
    try:
        running = target.start(ctx)
    except Exception as exc:
        print(f"{name} failed to start: {exc}", file=sys.stderr)
        return {**entry, "status": "failed", "reason": f"failed to start: {exc}"}
    try:
        try:
            warm_up(running, scenarios)
        except Exception as exc:
            print(f"{name} failed its warm-up: {exc}", file=sys.stderr)
            return {**entry, "status": "failed", "reason": f"warm-up: {exc}"}
        time.sleep(1)
        entry |= {"status": "ok", "rss_idle_mb": rss_mb(running), "scenarios": {}}
        served, peak = 0, 0.0
        for s in scenarios:
            levels = s.quick_levels if args.quick else s.levels
            per_level: dict[str, Any] = {}
            for level in levels:
                print(f"  {name} {s.name} c={level}", file=sys.stderr, flush=True)
                runs = []
                for _ in range(args.repeats):
                    try:
                        with Sampler(upstream) as up:
                            result = measure(
                                s,
                                level,
                                running.port,
                                running.auth,
                                running.pids(),
                                args.duration,
                                ctx.workdir,
                                args.stall_ms,
                            )
                        result["upstream_cpu_cores"] = up.figures().get("cpu_cores")
                    except Exception as exc:
                        result = {"error": str(exc)[:2000]}
                        print(f"    failed: {str(exc)[:300]}", file=sys.stderr)
                    runs.append(result)
                    count = result.get("requests", result.get("streams", 0))
                    served += count if isinstance(count, int) else 0
                    rss = result.get("rss_mb")
                    peak = max(peak, rss if isinstance(rss, float) else 0.0)
                good = [r for r in runs if "error" not in r]
                per_level[str(level)] = median_of(good) if good else runs[0]
            entry["scenarios"][s.name] = per_level
        if args.soak and running.measured:
            print(f"  {name} soak {args.soak:g} s", file=sys.stderr, flush=True)
            try:
                entry["soak"] = soak(
                    running.port, running.auth, running.pids(), args.soak, ctx.workdir
                )
            except Exception as exc:
                entry["soak"] = {"error": str(exc)[:2000]}
        time.sleep(2)
        entry |= {"rss_load_mb": peak or None, "rss_after_mb": rss_mb(running), "served": served}
        return entry
    finally:
        running.stop()


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run", description="Benchmark the proxy against direct and nginx on loopback."
    )
    visible = [n for n, t in TARGETS.items() if not t.hidden]
    parser.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help=f"comma-separated, from {', '.join(visible)} (direct always runs: it is the base)",
    )
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"from {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--duration", type=float, help="seconds per run (default 10; quick: 2)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per point; median reported")
    parser.add_argument("--quick", action="store_true", help="2 s runs, fewer burst sizes")
    parser.add_argument("--stall-ms", type=float, default=500.0, help="a longer gap is a stall")
    parser.add_argument("--chunk-delay-ms", type=float, default=20.0, help="upstream SSE pacing")
    parser.add_argument(
        "--soak", type=float, default=0, help="seconds of chat at c=16 watching RSS (e.g. 300)"
    )
    parser.add_argument("--out", type=Path, default=procs.ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    args.duration = args.duration or (2.0 if args.quick else 10.0)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(visible)}")
    args.targets = ["direct", *[n for n in names if n != "direct"]]
    args.scenarios = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in args.scenarios if n not in SCENARIOS]
    if unknown:
        parser.error(
            f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    scenarios = [SCENARIOS[n] for n in args.scenarios]
    if not wrk.available():
        dropped = [s.name for s in scenarios if s.kind == "wrk"]
        if dropped:
            print(
                f"wrk is not installed (apt-get install wrk): skipping {', '.join(dropped)}",
                file=sys.stderr,
            )
        scenarios = [s for s in scenarios if s.kind != "wrk"]
    workdir = Path(tempfile.mkdtemp(prefix="bench-run-"))
    logs = workdir / "logs"
    logs.mkdir()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
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
            "--chunks",
            "20",
            "--chunk-delay-ms",
            str(args.chunk_delay_ms),
        ],
        logs,
        port=up_port,
    )
    ctx = Context(upstream_port=up_port, workdir=workdir, logs=logs)
    results: dict[str, Any] = {
        "meta": {
            "started": started,
            "machine": machine(),
            "duration": args.duration,
            "repeats": args.repeats,
            "quick": args.quick,
            "stall_ms": args.stall_ms,
            "scenarios": [s.name for s in scenarios],
            "upstream": f"2 processes, 20 SSE chunks {args.chunk_delay_ms:g} ms apart",
            "load_average_before": os.getloadavg(),
        },
        "targets": {},
    }
    failed = False
    with procs.running(upstream):
        for name in args.targets:
            entry = run_target(name, ctx, scenarios, args, upstream.pids())
            results["targets"][name] = entry
            failed |= entry["status"] == "failed"
    results["meta"]["load_average_after"] = os.getloadavg()
    results["board"] = report.board(results)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    text = report.markdown(results)
    stem.with_suffix(".json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    stem.with_suffix(".md").write_text(text + "\n")
    print(text)
    print(f"\nwrote {stem}.md and {stem}.json", file=sys.stderr)
    if failed:
        print(f"logs kept in {logs}", file=sys.stderr)
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
