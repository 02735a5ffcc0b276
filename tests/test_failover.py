"""A project with two upstreams (priority 0 and 1) behind the real server, the first failing in
each way there is: the client gets one answer, a retry happens only while nothing has reached
the client, the upstream that broke mid-stream is not called twice, the breaker opens, probes
and closes, and every request leaves exactly one event saying who served and in how many
attempts."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.provider_fakes import FailingUpstream
from tests.provider_kit import add_upstream, event_count, event_row, provision_kind
from tests.proxy_process import UNLIMITED, Provisioned, ProxyProcess
from tests.services import free_port

BODY = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]}
ENV = {
    **UNLIMITED,
    "UPSTREAM_READ_TIMEOUT": "2s",
    "BREAKER_FAILURES": "2",
    "BREAKER_WINDOW": "60s",
    "BREAKER_COOLDOWN": "1s",
}


@dataclass
class Pair:
    primary: FailingUpstream
    secondary: FailingUpstream
    creds: Provisioned
    ids: tuple[str, str]


@dataclass
class Env:
    proxy: ProxyProcess
    env: dict[str, str]
    cwd: Path

    def chat(self, pair: Pair, **extra: object) -> tuple[httpx.Response, str]:
        request_id = "req-" + uuid.uuid4().hex
        response = httpx.post(
            self.proxy.url + "/v1/chat/completions",
            json={**BODY, **extra},
            headers={"authorization": f"Bearer {pair.creds.token}", "x-request-id": request_id},
            timeout=60,
        )
        return response, request_id


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    cwd = tmp_path_factory.mktemp("failover")
    env = dict(ENV)
    provision_kind(env, cwd, "http://127.0.0.1:9/v1", "openai", name="warmup", api_key="k" * 20)
    proxy = ProxyProcess(env=env, cwd=cwd, workers=1).start()
    yield Env(proxy, env, cwd)
    proxy.stop()


@pytest.fixture
def pair(world: Env) -> Iterator[Callable[[str], Pair]]:
    made: list[FailingUpstream] = []

    def make(mode: str) -> Pair:
        name = uuid.uuid4().hex[:8]
        primary = FailingUpstream(name="primary", mode=mode).start()
        secondary = FailingUpstream(name="secondary").start()
        made.extend((primary, secondary))
        creds = provision_kind(
            world.env, world.cwd, primary.base_url, "openai", name=name, api_key="unused-key-000"
        )
        first = add_upstream(
            world.env, world.cwd, creds.project_id, primary.base_url, api_key="key-one-0000"
        )
        second = add_upstream(
            world.env,
            world.cwd,
            creds.project_id,
            secondary.base_url,
            api_key="key-two-0000",
            priority=1,
        )
        return Pair(primary, secondary, creds, (first, second))

    yield make
    for fake in made:
        fake.release.set()
        fake.stop()


@pytest.mark.parametrize("mode", ["500", "429", "hang"])
def test_a_failure_before_any_byte_falls_back_to_the_next_priority(
    world: Env, pair: Callable[[str], Pair], mode: str
) -> None:
    p = pair(mode)
    response, request_id = world.chat(p)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "secondary"
    assert len(p.primary.requests) == 1 and len(p.secondary.requests) == 1
    assert p.primary.requests[0].headers["authorization"] == "Bearer key-one-0000"
    assert p.secondary.requests[0].headers["authorization"] == "Bearer key-two-0000"
    row = event_row(world.env, world.cwd, request_id)
    assert (row["status"], row["upstream"], row["attempts"]) == (200, p.ids[1], 2)
    assert event_count(world.env, world.cwd, p.creds.project_id) == 1


def test_a_refused_connection_falls_back(world: Env, pair: Callable[[str], Pair]) -> None:
    p = pair("ok")
    # the first upstream's address answers nothing: refused
    dead = f"http://127.0.0.1:{free_port()}/v1"
    add_upstream(world.env, world.cwd, p.creds.project_id, dead, api_key="k0" * 8, priority=-1)
    response, request_id = world.chat(p)
    assert response.status_code == 200
    assert response.json()["model"] == "primary"  # the next in line, priority 0
    row = event_row(world.env, world.cwd, request_id)
    assert row["attempts"] == 2


def test_429_opens_the_breaker_for_its_retry_after(world: Env, pair: Callable[[str], Pair]) -> None:
    p = pair("429")
    for _ in range(3):
        response, _ = world.chat(p)
        assert response.status_code == 200
    assert len(p.primary.requests) == 1  # skipped while its Retry-After (120s) runs
    assert len(p.secondary.requests) == 3


def test_a_stream_cut_mid_way_is_never_retried(world: Env, pair: Callable[[str], Pair]) -> None:
    p = pair("midstream")
    request_id = "req-" + uuid.uuid4().hex
    with (
        httpx.Client(timeout=60) as client,
        client.stream(
            "POST",
            world.proxy.url + "/v1/chat/completions",
            json={**BODY, "stream": True},
            headers={"authorization": f"Bearer {p.creds.token}", "x-request-id": request_id},
        ) as response,
    ):
        body = response.read()
    assert response.status_code == 200  # one answer: the stream that began, then its error
    assert b"w0" in body and b"[DONE]" not in body
    assert b"upstream" in body  # told in its own framing
    assert len(p.primary.requests) == 1
    assert p.secondary.requests == []
    row = event_row(world.env, world.cwd, request_id)
    assert (row["upstream"], row["attempts"]) == (p.ids[0], 1)
    assert row["error"]
    assert event_count(world.env, world.cwd, p.creds.project_id) == 1


def test_a_body_still_streaming_in_gets_one_attempt(
    world: Env, pair: Callable[[str], Pair]
) -> None:
    p = pair("500")

    def upload() -> Iterator[bytes]:  # chunked, larger than the proxy buffers: it streams
        for _ in range(24):
            yield b"x" * 65536

    response = httpx.post(
        world.proxy.url + "/v1/files",
        content=upload(),
        headers={"authorization": f"Bearer {p.creds.token}"},
        timeout=60,
    )
    assert response.status_code == 500  # the upstream's answer, as it was: nothing replayed
    assert len(p.primary.requests) == 1 and len(p.primary.requests[0].body) == 24 * 65536
    assert p.secondary.requests == []


def test_a_slow_drip_is_relayed_whole_from_the_first(
    world: Env, pair: Callable[[str], Pair]
) -> None:
    p = pair("drip")
    response, _ = world.chat(p, stream=True)
    assert response.status_code == 200
    assert response.text.count("data: ") == 5 and "[DONE]" in response.text
    assert p.secondary.requests == []


def test_the_breaker_opens_probes_and_closes_with_no_client_visible_error(
    world: Env, pair: Callable[[str], Pair]
) -> None:
    p = pair("500")
    client = openai.OpenAI(base_url=world.proxy.url + "/v1", api_key=p.creds.token, max_retries=0)
    served: list[str] = []

    def ask() -> None:
        reply = client.chat.completions.create(**BODY)  # type: ignore[call-overload]
        served.append(reply.model)

    for _ in range(4):
        ask()
    # two failures opened it; the next requests skip the primary
    assert len(p.primary.requests) == 2
    p.primary.mode = "ok"  # it recovers; after the cooldown one probe finds out
    deadline = time.monotonic() + 60
    while served[-1] != "primary":
        assert time.monotonic() < deadline, "the breaker never closed"
        time.sleep(0.1)
        ask()
    for _ in range(3):
        ask()
    assert served[-3:] == ["primary"] * 3  # closed again: priority 0 serves
    assert set(served) == {"primary", "secondary"}
    wait_for_events(world, p, len(served))


def wait_for_events(world: Env, p: Pair, expected: int) -> None:
    """Events = requests: exactly one final event for each (polled: the writer is async)."""
    deadline = time.monotonic() + 30
    while (count := event_count(world.env, world.cwd, p.creds.project_id)) < expected:
        assert time.monotonic() < deadline, f"{count} events for {expected} requests"
        time.sleep(0.05)
    assert count == expected
