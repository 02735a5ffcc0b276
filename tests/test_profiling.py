"""PROFILING_ENABLED: phase timings of real requests, the slowest kept across workers."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from hypothesis import given
from hypothesis import strategies as st

from proxy.profiling import PHASES, SlowestRequests, phases
from tests.proxy_process import UNLIMITED, ProxyProcess, provision
from tests.upstream_fake import FakeUpstream


def test_phases_are_the_gaps_between_marks() -> None:
    spent = phases(10.0, [("route", 10.001), ("auth", 10.004), ("body", 10.004), ("stream", 10.5)])
    assert list(spent) == ["route", "auth", "body", "stream"]
    assert [round(v, 6) for v in spent.values()] == [1.0, 3.0, 0.0, 496.0]


@given(st.lists(st.floats(0, 1e6, allow_nan=False), max_size=200), st.integers(1, 20))
def test_the_slowest_are_kept(durations: list[float], keep: int) -> None:
    slowest = SlowestRequests(keep)
    for i, d in enumerate(durations):
        slowest.offer(d, {"duration_ms": d, "i": i})
    kept = [r["duration_ms"] for r in slowest.records()]
    assert kept == sorted(durations, reverse=True)[:keep]


def test_the_slowest_requests_of_every_worker_with_their_phases(
    tmp_path: Path, management_token: str
) -> None:
    fake = FakeUpstream().start()
    env = {
        **UNLIMITED,
        "PROFILING_ENABLED": "true",
        "PROFILING_KEEP": "50",
        "MANAGEMENT_TOKEN": management_token,
    }
    proxy = None
    try:
        creds = provision(env, tmp_path, fake.base_url)
        proxy = ProxyProcess(env=env, cwd=tmp_path, workers=2).start()
        auth = {"Authorization": f"Bearer {creds.token}"}
        ids = []
        with httpx.Client(base_url=proxy.url, timeout=30) as client:
            for i in range(20):
                rid = f"prof-{i}"
                ids.append(rid)
                body = {"model": "slow-0.4" if i == 7 else "m", "messages": []}
                r = client.post(
                    "/v1/chat/completions", json=body, headers={**auth, "X-Request-ID": rid}
                )
                assert r.status_code == 200
            manage = {"Authorization": f"Bearer {management_token}"}
            report: dict = {}
            for _ in range(100):  # workers publish their slowest about once a second
                report = client.get("/manage/profiling?limit=50", headers=manage).json()
                if len(report["requests"]) >= 20:
                    break
                time.sleep(0.2)
            metrics = client.get("/metrics").text
        assert report["enabled"] is True
        seen = [r["request_id"] for r in report["requests"]]
        assert sorted(seen) == sorted(ids)  # every request, whichever worker served it
        slowest = report["requests"][0]
        assert slowest["request_id"] == "prof-7"
        assert slowest["phases_ms"]["upstream_first_byte"] >= 400
        for r in report["requests"]:
            assert list(r["phases_ms"]) == [p for p in PHASES if p in r["phases_ms"]]
            assert {
                "route",
                "auth",
                "body",
                "limits",
                "upstream_first_byte",
                "stream",
                "record",
            } <= set(r["phases_ms"])
            assert abs(sum(r["phases_ms"].values()) - r["duration_ms"]) < 0.01
        assert 'llm_proxy_phase_duration_seconds_count{phase="auth"} 20.0' in metrics
        bad = httpx.get(f"{proxy.url}/manage/profiling?limit=0", headers=manage)
        assert bad.status_code == 400
        assert httpx.get(f"{proxy.url}/manage/profiling").status_code == 401
    finally:
        if proxy is not None:
            proxy.stop()
        fake.stop()


def test_off_by_default(tmp_path: Path, management_token: str) -> None:
    fake = FakeUpstream().start()
    env = {**UNLIMITED, "MANAGEMENT_TOKEN": management_token}
    proxy = None
    try:
        creds = provision(env, tmp_path, fake.base_url)
        proxy = ProxyProcess(env=env, cwd=tmp_path, workers=1).start()
        r = httpx.post(
            f"{proxy.url}/v1/chat/completions",
            json={"model": "m", "messages": []},
            headers={"Authorization": f"Bearer {creds.token}"},
        )
        assert r.status_code == 200
        report = httpx.get(
            f"{proxy.url}/manage/profiling",
            headers={"Authorization": f"Bearer {management_token}"},
        ).json()
        assert report == {"enabled": False, "requests": []}
        assert (
            "llm_proxy_phase_duration_seconds_count" not in httpx.get(f"{proxy.url}/metrics").text
        )
    finally:
        if proxy is not None:
            proxy.stop()
        fake.stop()
