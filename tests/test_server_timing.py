"""`Server-Timing: proxy;dur=…, upstream;dur=…` on every answer, forwarded, streamed or from the
cache, with one meaning (docs/operations.md "Server-Timing"), and the same figure as the
`llm_proxy_overhead_seconds` histogram."""

from __future__ import annotations

import asyncio
import http.client
import re
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.proxy_process import UNLIMITED, Provisioned, ProxyProcess, provision
from tests.upstream_fake import FakeUpstream

TIMING = re.compile(r"^proxy;dur=(\d+\.\d+), upstream;dur=(\d+\.\d+)$")


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ProxyProcess, Provisioned, FakeUpstream]]:
    fake = FakeUpstream().start()
    cwd = tmp_path_factory.mktemp("timing")
    creds = provision(UNLIMITED, cwd, fake.base_url)
    proxy = ProxyProcess(env=UNLIMITED, cwd=cwd, workers=1).start()
    yield proxy, creds, fake
    proxy.stop()
    fake.stop()


def timing(response: httpx.Response) -> tuple[float, float]:
    """(proxy ms, upstream ms) from the one Server-Timing header."""
    values = response.headers.get_list("server-timing")
    assert len(values) == 1, values
    found = TIMING.match(values[0])
    assert found, values[0]
    return float(found[1]), float(found[2])


def timed_get(url: str, headers: dict[str, str]) -> tuple[httpx.Response, float]:
    began = time.perf_counter()
    response = httpx.get(url, headers=headers)
    return response, (time.perf_counter() - began) * 1000


def overhead_total(proxy: ProxyProcess, part: str = "count") -> float:
    """The histogram's ``count`` or ``sum`` over every endpoint."""
    text = httpx.get(f"{proxy.url}/metrics").text
    pattern = rf"^llm_proxy_overhead_seconds_{part}\{{[^}}]*\}} (\S+)"
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def overhead_count(proxy: ProxyProcess) -> float:
    return overhead_total(proxy, "count")


def test_miss_and_hit_carry_the_proxy_time_without_the_upstream_time(
    served: tuple[ProxyProcess, Provisioned, FakeUpstream],
) -> None:
    proxy, creds, _ = served
    auth = {"Authorization": f"Bearer {creds.token}"}
    url = f"{proxy.url}/v1/models?fake=slow-0.3&timing=1"
    miss, miss_wall = timed_get(url, auth)
    hit, hit_wall = timed_get(url, auth)
    assert (miss.headers["x-proxy-cache"], hit.headers["x-proxy-cache"]) == ("miss", "hit")
    miss_proxy, miss_upstream = timing(miss)
    hit_proxy, hit_upstream = timing(hit)
    assert miss_upstream >= 300  # the fake upstream slept that long before its headers
    assert hit_upstream == 0  # nothing was waited for
    # Both intervals lie inside what the client waited, and never overlap.
    assert miss_proxy + miss_upstream <= miss_wall
    assert 0 < hit_proxy <= hit_wall


def test_streams_and_collapsed_hits_carry_it_too(
    served: tuple[ProxyProcess, Provisioned, FakeUpstream],
) -> None:
    proxy, creds, _ = served
    auth = {"Authorization": f"Bearer {creds.token}"}
    body = {"model": "gpt-fake", "messages": [{"role": "user", "content": "t"}], "stream": True}
    with httpx.stream(
        "POST", f"{proxy.url}/v1/chat/completions", headers=auth, json=body
    ) as stream:
        stream.read()
    assert stream.headers["content-type"].startswith("text/event-stream")
    timing(stream)

    url = f"{proxy.url}/v1/models?fake=slow-3&timing=herd"

    async def herd() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*(client.get(url, headers=auth) for _ in range(3)))

    answers = asyncio.run(herd())
    assert sorted(a.headers["x-proxy-cache"] for a in answers) == ["hit", "hit", "miss"]
    collapsed = [a for a in answers if "collapsed" in a.headers["cache-status"]]
    assert collapsed, "the upstream took 3 s: the others arrived while it was on its way"
    for answer in answers:
        upstream_ms = timing(answer)[1]
        if answer.headers["x-proxy-cache"] == "miss" or answer in collapsed:
            # A collapsed request waited on the identical one's upstream call: upstream time.
            assert upstream_ms > 0
        else:
            assert upstream_ms == 0


def test_every_answer_is_observed_in_the_overhead_histogram(
    served: tuple[ProxyProcess, Provisioned, FakeUpstream],
) -> None:
    proxy, creds, _ = served
    auth = {"Authorization": f"Bearer {creds.token}"}
    before = overhead_count(proxy)
    url = f"{proxy.url}/v1/models?timing=count"
    answers = [httpx.get(url, headers=auth) for _ in range(3)]
    assert [a.headers["x-proxy-cache"] for a in answers] == ["miss", "hit", "hit"]
    assert overhead_count(proxy) == before + 3


def test_the_figures_start_at_the_request_s_first_bytes_not_at_the_app(
    served: tuple[ProxyProcess, Provisioned, FakeUpstream],
) -> None:
    """A request head sent in two parts, a pause apart: the app runs only once the head is
    complete, so only a figure started by the server at the first bytes can cover the pause.
    Each request on a kept-alive connection is timed from its own first bytes."""
    proxy, creds, _ = served
    pause = 0.4  # seconds; well inside REQUEST_HEADER_TIMEOUT
    head = (
        "GET /v1/models?timing=split HTTP/1.1\r\nHost: proxy\r\n"
        f"Authorization: Bearer {creds.token}\r\n\r\n"
    ).encode()
    sum_before, count_before = overhead_total(proxy, "sum"), overhead_total(proxy, "count")
    said = []
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
        for _ in range(2):
            began = time.perf_counter()
            sock.sendall(head[:9])  # "GET /v1/m"
            time.sleep(pause)
            sock.sendall(head[9:])
            answer = http.client.HTTPResponse(sock)
            answer.begin()
            answer.read()
            wall_ms = (time.perf_counter() - began) * 1000
            assert answer.status == 200
            found = TIMING.match(answer.getheader("server-timing") or "")
            assert found, answer.getheaders()
            proxy_ms, upstream_ms = float(found[1]), float(found[2])
            # The pause before the head was complete, less what the loopback's delivery of the
            # first part may take from it: an app-only figure is far below half of it.
            assert proxy_ms >= pause * 1000 / 2
            # ...and nothing from before this request's first bytes (the previous request,
            # the idle time between them): the figures lie inside what the client waited
            assert proxy_ms + upstream_ms <= wall_ms
            said.append(proxy_ms)
            time.sleep(pause)  # idle on the kept-alive connection
    assert overhead_total(proxy, "count") == count_before + 2
    # the histogram continues past the head (to the last byte): never below the header's
    # figure (each rounded to 0.01 ms)
    assert (overhead_total(proxy, "sum") - sum_before) * 1000 >= sum(said) - 0.01
