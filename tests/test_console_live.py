"""The console's live figures: the arithmetic, and totals that cover every worker (multiprocess
directory) and every instance (Redis), read from whichever worker answers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis import Redis

from proxy.console.live import Totals, point_of, quantile
from tests.browser import wait_for
from tests.console_client import signed_in
from tests.proxy_process import UNLIMITED, ProxyProcess, provision
from tests.services import require
from tests.upstream_fake import FakeUpstream

TOKEN = "console-live-mgmt-token-0123456789"
BOUNDS = (0.001, 0.01, 0.1, 1.0, math.inf)


def test_quantiles_interpolate_within_a_bucket_as_prometheus_does() -> None:
    # 10 answers under 1 ms, 10 between 10 and 100 ms
    buckets = {0.001: 10, 0.01: 10, 0.1: 20, 1.0: 20, math.inf: 20}
    assert quantile(0.5, buckets) == pytest.approx(0.001)
    assert quantile(0.75, buckets) == pytest.approx(0.055)
    assert quantile(0.25, buckets) == pytest.approx(0.0005)
    assert quantile(0.5, {0.1: 0, math.inf: 0}) is None
    # answers past the last finite bound: all we know is that bound
    assert quantile(0.99, {0.1: 0, math.inf: 4}) == pytest.approx(0.1)


@given(st.lists(st.integers(0, 50), min_size=len(BOUNDS), max_size=len(BOUNDS)))
def test_quantiles_are_ordered_and_inside_the_observed_range(counts: list[int]) -> None:
    running, buckets = 0, {}
    for le, n in zip(BOUNDS, counts, strict=True):
        running += n
        buckets[le] = float(running)
    values = [quantile(q, buckets) for q in (0.5, 0.95, 0.99)]
    if running == 0:
        assert values == [None, None, None]
        return
    assert all(v is not None for v in values)
    assert values == sorted(values)  # type: ignore[type-var]
    assert all(0 <= v <= 1.0 for v in values)  # type: ignore[operator]


def test_a_restarted_worker_counts_from_zero_not_below() -> None:
    before = Totals(requests=100, server_errors=5, buckets={1.0: 100, math.inf: 100})
    after = Totals(requests=3, server_errors=1, buckets={1.0: 3, math.inf: 3}, in_flight=2)
    delta = after.minus(before)
    assert (delta.requests, delta.server_errors, delta.in_flight) == (3, 1, 2)
    point = point_of(0, delta, 1.0)
    assert point.rps == 3 and point.error_rate == 0.3333


def _figures(base: str, cookies: httpx.Cookies) -> dict[str, Any]:
    # a new connection each time, so any worker may answer
    answer = httpx.get(f"{base}/console/live.json", cookies=cookies, timeout=30)
    assert answer.status_code == 200, answer.text
    figures: dict[str, Any] = answer.json()
    return figures


def _send(base: str, token: str, n: int) -> None:
    for _ in range(n):
        answer = httpx.post(
            f"{base}/v1/chat/completions",
            headers={"Authorization": f"Bearer {token}"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text


def _agreed(base: str, cookies: httpx.Cookies, expected: int, times: int = 8) -> bool:
    """Whether ``times`` reads in a row (on fresh connections) all report ``expected``."""
    return all(_figures(base, cookies)["window_requests"] == expected for _ in range(times))


def test_every_worker_shows_the_requests_of_every_worker(tmp_path: Path) -> None:
    fake = FakeUpstream().start()
    env = {
        "MANAGEMENT_TOKEN": TOKEN,
        "METRICS_AGGREGATION_INTERVAL_MS": "500",
        "METRICS_RETENTION_MS": "600000",  # nothing ages out on a slow machine
        **UNLIMITED,
    }
    made = provision(env, tmp_path, fake.base_url)
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=2).start()
    try:
        client = signed_in(proxy.url, TOKEN)
        # a worker's history starts with its first sample: wait until every worker has one
        wait_for(
            "every worker sampling",
            lambda: all(_figures(proxy.url, client.cookies)["history"] for _ in range(8)),
            60,
        )
        _send(proxy.url, made.token, 12)  # new connections: both workers serve some
        wait_for("12 requests on the overview", lambda: _agreed(proxy.url, client.cookies, 12), 60)
        figures = _figures(proxy.url, client.cookies)
        assert figures["where"] == "multiprocess-directory"
        assert figures["interval_ms"] == 500
        latest = [p for p in figures["history"] if p["rps"]]
        assert latest and all(p["p50_ms"] is not None for p in latest)
        client.close()
    finally:
        proxy.stop()
        fake.stop()


def test_an_instance_shows_the_requests_another_instance_served(
    tmp_path: Path, unique_prefix: str
) -> None:
    require("redis", "127.0.0.1", 6379)
    fake = FakeUpstream().start()
    shared = {
        "MANAGEMENT_TOKEN": TOKEN,
        "REDIS_ADDR": "127.0.0.1:6379",
        "REDIS_STREAM_KEY": f"{unique_prefix}events",
        "DISTRIBUTED_RATE_LIMIT_ENABLED": "true",
        "DISTRIBUTED_RATE_LIMIT_KEY_SECRET": "console-live-limits-secret",
        "DISTRIBUTED_RATE_LIMIT_PREFIX": f"{unique_prefix}rl:",
        "DISTRIBUTED_RATE_LIMIT_MAX": "0",
        "METRICS_RETENTION_MS": "600000",
        **UNLIMITED,
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    made = provision(shared, tmp_path / "a", fake.base_url)
    serving = ProxyProcess(env=shared, cwd=tmp_path / "a", workers=2).start()
    watching = ProxyProcess(env=shared, cwd=tmp_path / "b", workers=2).start()
    try:
        client = signed_in(watching.url, TOKEN)
        _send(serving.url, made.token, 9)
        wait_for(
            "the other instance's requests", lambda: _agreed(watching.url, client.cookies, 9), 60
        )
        assert _figures(watching.url, client.cookies)["where"] == "redis"
        client.close()
    finally:
        serving.stop()
        watching.stop()
        fake.stop()

        Redis(host="127.0.0.1", port=6379).delete(f"{unique_prefix}events:console-live")
