"""`bench/validate`: check a running deployment against latency, throughput and memory targets.

The tuning guide's "validate latency", "validate resources" and memory-leak test, for this proxy:
load one scenario with wrk at the address given, read the resident memory of the processes given
(a gunicorn master and everything below it), optionally soak and fit the memory trend, and exit 1
when any target given as a flag is missed. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import procs, wrk
from bench.scenarios import SCENARIOS, Sampler, body_file


@dataclass
class Check:
    name: str
    target: str
    measured: str
    ok: bool


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/validate", description=__doc__)
    p.add_argument("--url", required=True, help="the deployment, e.g. http://127.0.0.1:8080")
    p.add_argument("--token", default="", help="a proxy token (sent as a bearer token)")
    p.add_argument(
        "--scenario",
        default="chat",
        choices=[n for n, s in SCENARIOS.items() if s.kind == "wrk"],
        help="the request to send (bench/scenarios.py)",
    )
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load")
    p.add_argument("--max-p50-ms", type=float)
    p.add_argument("--max-p99-ms", type=float)
    p.add_argument("--min-rps", type=float)
    p.add_argument(
        "--max-error-rate", type=float, default=0.0, help="share of failed requests allowed"
    )
    p.add_argument(
        "--pid",
        type=int,
        action="append",
        default=[],
        help="a process to measure with its descendants (repeatable): the gunicorn master",
    )
    p.add_argument("--max-rss-mb", type=float, help="largest total RSS under load (needs --pid)")
    p.add_argument(
        "--max-process-rss-mb", type=float, help="largest RSS of one process (needs --pid)"
    )
    p.add_argument("--soak", type=float, default=0.0, help="then load this many seconds more")
    p.add_argument(
        "--max-leak-mb-per-min",
        type=float,
        help="largest RSS trend over the soak's second half (needs --pid and --soak)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    args = p.parse_args(argv)
    memory = (args.max_rss_mb, args.max_process_rss_mb, args.max_leak_mb_per_min)
    if any(x is not None for x in memory) and not args.pid:
        p.error("memory targets need --pid")
    if args.max_leak_mb_per_min is not None and args.soak <= 0:
        p.error("--max-leak-mb-per-min needs --soak SECONDS")
    return args


def reachable(url: str) -> str:
    """An empty string, or why the deployment cannot be measured."""
    request = urllib.request.Request(url.rstrip("/") + "/health")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            if resp.status != 200:
                return f"{url}/health answered {resp.status}"
    except (urllib.error.URLError, OSError) as exc:
        return f"cannot reach {url}: {exc}"
    return ""


def slope_mb_per_min(series: list[tuple[float, int]]) -> float:
    """Least-squares trend of total RSS over the second half of the samples."""
    half = series[len(series) // 2 :]
    if len(half) < 2:
        return 0.0
    mean_t = statistics.fmean(t for t, _ in half)
    mean_m = statistics.fmean(b / 2**20 for _, b in half)
    var = sum((t - mean_t) ** 2 for t, _ in half)
    if not var:
        return 0.0
    return sum((t - mean_t) * (b / 2**20 - mean_m) for t, b in half) / var * 60


def validate(args: argparse.Namespace) -> tuple[list[Check], dict[str, object]]:
    scenario = SCENARIOS[args.scenario]
    url = args.url.rstrip("/") + scenario.path
    auth = f"Bearer {args.token}" if args.token else ""
    pids = [p for pid in args.pid for p in procs.descendants(pid)]
    with tempfile.TemporaryDirectory() as tmp:
        body = body_file(scenario, Path(tmp))
        wrk.run(url, 1, 1, scenario.method, body, auth)  # warm pools and caches
        with Sampler(pids) as sampler:
            load = wrk.run(url, args.concurrency, args.duration, scenario.method, body, auth)
        soak: dict[str, object] = {}
        if args.soak > 0:
            with Sampler(pids, interval=max(args.soak / 40, 0.5)) as soaker:
                soaked = wrk.run(url, args.concurrency, args.soak, scenario.method, body, auth)
            soak = {
                "seconds": args.soak,
                "rps": soaked.rps,
                "errors": soaked.errors,
                "slope_mb_per_min": round(slope_mb_per_min(soaker.series), 3),
            }
    error_rate = load.errors / load.requests if load.requests else 1.0
    figures: dict[str, object] = {
        "scenario": scenario.name,
        "concurrency": args.concurrency,
        "requests": load.requests,
        "rps": load.rps,
        "p50_ms": load.p50_ms,
        "p99_ms": load.p99_ms,
        "error_rate": round(error_rate, 6),
        "rss_mb": round(sampler.peak_total / 2**20, 1) if pids else None,
        "process_rss_mb": round(sampler.peak_process / 2**20, 1) if pids else None,
        "soak": soak or None,
    }
    checks = [
        Check(
            "error rate",
            f"<= {args.max_error_rate:g}",
            f"{error_rate:.4%} ({load.errors} of {load.requests})",
            error_rate <= args.max_error_rate and load.requests > 0,
        )
    ]
    if args.max_p50_ms is not None:
        checks.append(
            Check(
                "P50",
                f"<= {args.max_p50_ms:g} ms",
                f"{load.p50_ms:.3f} ms",
                load.p50_ms <= args.max_p50_ms,
            )
        )
    if args.max_p99_ms is not None:
        checks.append(
            Check(
                "P99",
                f"<= {args.max_p99_ms:g} ms",
                f"{load.p99_ms:.3f} ms",
                load.p99_ms <= args.max_p99_ms,
            )
        )
    if args.min_rps is not None:
        checks.append(
            Check("requests/s", f">= {args.min_rps:g}", f"{load.rps:.1f}", load.rps >= args.min_rps)
        )
    if args.max_rss_mb is not None:
        total = sampler.peak_total / 2**20
        checks.append(
            Check("RSS", f"<= {args.max_rss_mb:g} MB", f"{total:.1f} MB", total <= args.max_rss_mb)
        )
    if args.max_process_rss_mb is not None:
        one = sampler.peak_process / 2**20
        checks.append(
            Check(
                "RSS of one process",
                f"<= {args.max_process_rss_mb:g} MB",
                f"{one:.1f} MB",
                one <= args.max_process_rss_mb,
            )
        )
    if args.max_leak_mb_per_min is not None:
        slope = float(soak["slope_mb_per_min"])  # type: ignore[arg-type]
        checks.append(
            Check(
                "memory trend",
                f"<= {args.max_leak_mb_per_min:g} MB/min",
                f"{slope:+.3f} MB/min",
                slope <= args.max_leak_mb_per_min,
            )
        )
    return checks, figures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not wrk.available():
        print("error: wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    problem = reachable(args.url)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    started = time.monotonic()
    checks, figures = validate(args)
    passed = all(c.ok for c in checks)
    if args.json:
        doc = {"passed": passed, "checks": [asdict(c) for c in checks], "figures": figures}
        print(json.dumps(doc, indent=2))
    else:
        print(
            f"{figures['scenario']} at c={args.concurrency} for {time.monotonic() - started:.0f} s:"
        )
        for c in checks:
            print(f"  {'ok  ' if c.ok else 'MISS'}  {c.name}: {c.measured} (target {c.target})")
        print("passed" if passed else "failed: a target was missed")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
