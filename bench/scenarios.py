"""The fixed scenarios, and one measurement of a scenario at one concurrency against one target.

wrk drives the request/response scenarios (throughput and latency percentiles); bench/streams.py
drives the streaming ones (time to first SSE event, time to last, largest gap, stalls).
While a load runs, a sampler reads the target's RSS and CPU time from /proc.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from bench import procs, wrk

SMALL_CHAT = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
}
# ~8 KB: a system prompt plus a long user message, the size of a typical RAG request.
LARGE_CHAT = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are a careful assistant. " * 40},
        {"role": "user", "content": "Summarise the following notes. " + "lorem ipsum dolor " * 370},
    ],
}
STREAM_CHAT = {**SMALL_CHAT, "stream": True, "stream_options": {"include_usage": True}}
EMBEDDINGS = {"model": "text-embedding-3-small", "input": "The quick brown fox."}


@dataclass(frozen=True)
class Scenario:
    name: str
    about: str
    kind: str  # "wrk" (request/response), "stream" (streams back to back), "burst" (N at once)
    method: str
    path: str
    body: Mapping[str, object] | None
    levels: tuple[int, ...]
    quick_levels: tuple[int, ...]


SCENARIOS = {
    s.name: s
    for s in (
        Scenario(
            "chat",
            "non-streaming chat, small body",
            "wrk",
            "POST",
            "/v1/chat/completions",
            SMALL_CHAT,
            (1, 16, 64),
            (1, 16, 64),
        ),
        Scenario(
            "chat-8k",
            "non-streaming chat, ~8 KB body",
            "wrk",
            "POST",
            "/v1/chat/completions",
            LARGE_CHAT,
            (1, 16, 64),
            (1, 16, 64),
        ),
        Scenario(
            "models",
            "GET /v1/models (a cache hit on the proxy)",
            "wrk",
            "GET",
            "/v1/models",
            None,
            (1, 16, 64, 256),
            (1, 16, 64, 256),
        ),
        Scenario(
            "embeddings",
            "embeddings, 1536 floats back",
            "wrk",
            "POST",
            "/v1/embeddings",
            EMBEDDINGS,
            (1, 16, 64),
            (1, 16, 64),
        ),
        Scenario(
            "stream",
            "streaming chat, 20 chunks",
            "stream",
            "POST",
            "/v1/chat/completions",
            STREAM_CHAT,
            (1, 16, 64),
            (1, 16, 64),
        ),
        Scenario(
            "stream-burst",
            "N streams opened at once; stalled if a gap exceeds the limit",
            "burst",
            "POST",
            "/v1/chat/completions",
            STREAM_CHAT,
            (64, 128, 256, 512),
            (64, 512),
        ),
    )
}


class Sampler:
    """Peak RSS and CPU time of some processes while a load runs (a thread reading /proc)."""

    def __init__(self, pids: list[int], interval: float = 0.25) -> None:
        self.pids, self.interval = pids, interval
        self.peak_total = 0
        self.peak_process = 0
        self.series: list[tuple[float, int]] = []  # (seconds since start, total RSS bytes)
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        rss = procs.rss_bytes(self.pids)
        if rss:
            self.series.append((time.monotonic() - self._t0, sum(rss.values())))
            self.peak_total = max(self.peak_total, sum(rss.values()))
            self.peak_process = max(self.peak_process, max(rss.values()))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> Sampler:
        self._cpu0, self._t0 = procs.cpu_seconds(self.pids), time.monotonic()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        wall = time.monotonic() - self._t0
        self.cpu_seconds = procs.cpu_seconds(self.pids) - self._cpu0
        self.cpu = self.cpu_seconds / wall if wall else 0.0

    def figures(self) -> dict[str, float]:
        if not self.pids:
            return {}
        return {
            "cpu_cores": round(self.cpu, 2),
            "cpu_seconds": round(self.cpu_seconds, 2),
            "rss_mb": round(self.peak_total / 2**20, 1),
            "rss_max_process_mb": round(self.peak_process / 2**20, 1),
        }


def soak(port: int, auth: str, pids: list[int], seconds: float, files: Path) -> dict[str, object]:
    """Chat at c=16 for a long run; RSS every 5 s and its trend over the second half."""
    scenario = SCENARIOS["chat"]
    url = f"http://127.0.0.1:{port}{scenario.path}"
    with Sampler(pids, interval=5.0) as sampler:
        result = wrk.run(url, 16, seconds, scenario.method, body_file(scenario, files), auth)
    series = [(round(t, 1), round(b / 2**20, 1)) for t, b in sampler.series]
    half = series[len(series) // 2 :]
    slope = 0.0
    if len(half) >= 2:
        mean_t = statistics.fmean(t for t, _ in half)
        mean_m = statistics.fmean(m for _, m in half)
        var = sum((t - mean_t) ** 2 for t, _ in half)
        slope = sum((t - mean_t) * (m - mean_m) for t, m in half) / var * 60 if var else 0.0
    return {
        "seconds": seconds,
        "rps": result.rps,
        "requests": result.requests,
        "errors": result.errors,
        "p99_ms": result.p99_ms,
        "rss_start_mb": series[0][1] if series else None,
        "rss_end_mb": series[-1][1] if series else None,
        "rss_max_process_mb": round(sampler.peak_process / 2**20, 1),
        "slope_mb_per_min": round(slope, 3),
        "series": series,
    }


def body_file(scenario: Scenario, directory: Path) -> Path | None:
    if scenario.body is None:
        return None
    path = directory / f"{scenario.name}.json"
    if not path.exists():
        path.write_bytes(orjson.dumps(scenario.body))
    return path


def streams_driver(args: list[str], timeout: float) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.streams", *args],
        capture_output=True,
        text=True,
        cwd=procs.ROOT,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"stream driver failed: {done.stderr.strip()[-2000:]}")
    return dict(orjson.loads(done.stdout))


def measure(
    scenario: Scenario,
    level: int,
    port: int,
    auth: str,
    pids: list[int],
    duration: float,
    files: Path,
    stall_ms: float,
) -> dict[str, object]:
    """One run: wrk figures, or stream figures, plus the target's CPU and peak RSS meanwhile."""
    url = f"http://127.0.0.1:{port}{scenario.path}"
    body = body_file(scenario, files)
    with Sampler(pids) as sampler:
        if scenario.kind == "wrk":
            result: dict[str, object] = asdict(
                wrk.run(url, level, duration, scenario.method, body, auth)
            )
        else:
            if scenario.kind == "stream":
                args = ["load", "-c", str(level), "-d", str(duration)]
            else:
                args = ["burst", "-n", str(level)]
            args += ["--url", url, "--auth", auth, "--stall-ms", str(stall_ms)]
            args += ["--body-file", str(body)] if body else []
            result = streams_driver(args, duration + 120)
    figures = sampler.figures()
    served = result.get("requests") or result.get("streams")
    if figures and isinstance(served, int) and served:
        # CPU per request holds up on a busy machine better than requests/s does.
        figures["cpu_us_per_request"] = round(figures["cpu_seconds"] * 1e6 / served, 1)
    return {**result, **figures}


MEDIAN_KEYS = (
    "rps",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "cpu_cores",
    "cpu_us_per_request",
    "rss_mb",
    "streams_per_s",
)


def median_of(runs: list[dict[str, object]]) -> dict[str, object]:
    """Repeated runs folded into one: medians of the figures, sums of errors, worst of the gaps."""
    if len(runs) == 1:
        return runs[0]
    out = dict(runs[len(runs) // 2])
    for key in MEDIAN_KEYS:
        values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
        if values:
            out[key] = statistics.median(values)  # type: ignore[type-var]
    for key, value in out.items():
        if isinstance(value, dict) and key.endswith("_ms"):
            subs: list[dict[str, float]] = [r[key] for r in runs if isinstance(r.get(key), dict)]  # type: ignore[misc]
            out[key] = {
                k: (max if k == "max" else statistics.median)([s[k] for s in subs if k in s])
                for k in value
            }
    for key in ("errors", "stalled"):
        if key in out:
            out[key] = sum(int(r[key]) for r in runs)  # type: ignore[call-overload]
    out["repeats"] = len(runs)
    return out
