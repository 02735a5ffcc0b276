"""Running wrk with bench/wrk.lua and reading back its one-line JSON summary."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import orjson

LUA = Path(__file__).resolve().parent / "wrk.lua"


def available() -> bool:
    return shutil.which("wrk") is not None


@dataclass
class WrkResult:
    """One wrk run: throughput, latency percentiles in milliseconds, and every kind of error."""

    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # connect + read + write + timeout + non-2xx/3xx
    error_detail: dict[str, int]

    @classmethod
    def parse(cls, output: str) -> WrkResult:
        line = next((x for x in output.splitlines() if x.startswith("BENCH_JSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk printed no summary:\n{output[-2000:]}")
        data = orjson.loads(line.removeprefix("BENCH_JSON "))
        lat = data["latency_us"]
        seconds = data["duration_us"] / 1e6
        return cls(
            requests=data["requests"],
            rps=round(data["requests"] / seconds, 1) if seconds else 0.0,
            p50_ms=lat["p50"] / 1000,
            p90_ms=lat["p90"] / 1000,
            p99_ms=lat["p99"] / 1000,
            max_ms=lat["max"] / 1000,
            errors=sum(data["errors"].values()),
            error_detail=data["errors"],
        )


def run(
    url: str,
    connections: int,
    duration: float,
    method: str = "GET",
    body_file: Path | None = None,
    auth: str = "",
    threads: int | None = None,
) -> WrkResult:
    """One wrk run; one thread at c=1 (a second would sit idle), otherwise two (our two cores)."""
    threads = threads or (1 if connections < 2 else 2)
    env = {
        **os.environ,
        "BENCH_METHOD": method,
        "BENCH_BODY_FILE": str(body_file or ""),
        "BENCH_AUTH": auth,
    }
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "5s",
        "-s",
        str(LUA),
        url,
    ]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=duration + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return WrkResult.parse(done.stdout)
