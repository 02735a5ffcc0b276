"""The embedded default never loses an event it answered for: a locked SQLite file, a full
buffer, reject mode; through the real server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from proxy.bus import journal_dir
from tests.proxy_process import UNLIMITED, Provisioned, ProxyProcess, provision
from tests.upstream_fake import FakeUpstream


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream().start()
    yield upstream
    upstream.stop()


def send(url: str, cred: Provisioned, total: int, concurrency: int = 20) -> Counter[int]:
    """``total`` chat requests; how many got each status."""

    async def go() -> Counter[int]:
        statuses: Counter[int] = Counter()
        async with httpx.AsyncClient(timeout=60) as client:

            async def one(i: int) -> None:
                resp = await client.post(
                    f"{url}/v1/chat/completions",
                    headers={"Authorization": f"Bearer {cred.token}"},
                    json={"model": "gpt-fake", "messages": [{"role": "user", "content": str(i)}]},
                )
                statuses[resp.status_code] += 1

            for start in range(0, total, concurrency):
                end = min(start + concurrency, total)
                await asyncio.gather(*(one(i) for i in range(start, end)))
        return statuses

    return asyncio.run(go())


def hold_stream(
    url: str, cred: Provisioned, statuses: list[int], failed: list[BaseException]
) -> None:
    """A stream the fake upstream holds until ``fake.release``; read to its end (or its
    failure: the proxy's worker killed under it)."""
    try:
        with httpx.stream(
            "POST",
            f"{url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {cred.token}"},
            json={"model": "hold", "messages": [], "stream": True},
            timeout=60,
        ) as resp:
            for _ in resp.iter_lines():
                pass
            statuses.append(resp.status_code)
    except httpx.HTTPError as exc:
        failed.append(exc)


def rows(db: Path, status: int) -> int:
    with sqlite3.connect(db) as conn:
        found = conn.execute("SELECT count(*) FROM request_events WHERE status = ?", (status,))
        return int(found.fetchone()[0])


def request_count(db: Path, token_id: str) -> int:
    with sqlite3.connect(db) as conn:
        found = conn.execute("SELECT request_count FROM tokens WHERE id = ?", (token_id,))
        return int(found.fetchone()[0])


def wait_rows(db: Path, status: int, expected: int, timeout: float = 90.0) -> int:
    deadline = time.monotonic() + timeout
    while rows(db, status) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)  # anything beyond would show now
    return rows(db, status)


def wait_metric(url: str, name: str, timeout: float = 30.0) -> None:
    """Until the counter ``name`` is above zero on /metrics."""
    deadline = time.monotonic() + timeout
    while True:
        for line in httpx.get(f"{url}/metrics").text.splitlines():
            if line.startswith(name + " ") and float(line.split()[-1]) > 0:
                return
        assert time.monotonic() < deadline, f"{name} stayed 0"
        time.sleep(0.2)


class Lock:
    """A long write transaction on the SQLite file, as a backup or a migration would hold."""

    def __init__(self, db: Path) -> None:
        self.conn = sqlite3.connect(db, isolation_level=None)
        self.conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()


@pytest.mark.timeout(300)
def test_a_locked_database_and_a_full_buffer_lose_no_event(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    env = {**UNLIMITED, "OBSERVABILITY_BUFFER_SIZE": "20", "HTTP_CACHE_ENABLED": "false"}
    cred = provision(env, tmp_path, fake.base_url)
    db = tmp_path / "llm-proxy.db"
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=2).start()
    try:
        statuses = send(proxy.url, cred, 60)
        lock = Lock(db)
        try:
            statuses += send(proxy.url, cred, 300)  # served while nothing can be written
            wait_metric(proxy.url, "llm_proxy_event_bus_spooled_events_total")
        finally:
            lock.release()
        statuses += send(proxy.url, cred, 40)
        recorded = wait_rows(db, 200, 400)
    finally:
        proxy.stop()
    assert statuses == Counter({200: 400})
    assert recorded == 400
    assert request_count(db, cred.token_id) == 400
    with sqlite3.connect(db) as conn:  # 11 + 7 tokens per answer, in rows and in the counters
        in_rows = conn.execute("SELECT sum(prompt_tokens + completion_tokens) FROM request_events")
        assert in_rows.fetchone()[0] == 400 * 18
        counted = conn.execute("SELECT prompt_tokens + completion_tokens FROM tokens")
        assert counted.fetchone()[0] == 400 * 18


@pytest.mark.timeout(300)
def test_reject_mode_serves_only_what_it_can_record(tmp_path: Path, fake: FakeUpstream) -> None:
    """The database locked and a small spool: requests are served while their events (and
    those of the requests in flight) can be kept, then refused with 503 before any upstream
    call. Every served request is a row; every upstream call is a served request."""
    env = {
        **UNLIMITED,
        "OBSERVABILITY_BUFFER_SIZE": "20",
        "HTTP_CACHE_ENABLED": "false",
        "EVENT_BUS_FAILURE_MODE": "reject",
        "EVENT_SPOOL_MAX_BYTES": "60000",
    }
    cred = provision(env, tmp_path, fake.base_url)
    db = tmp_path / "llm-proxy.db"
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=1).start()
    try:
        before = send(proxy.url, cred, 30)
        assert before == Counter({200: 30})
        lock = Lock(db)
        try:
            during = send(proxy.url, cred, 300)
        finally:
            lock.release()
        served = 30 + during[200]
        recorded = wait_rows(db, 200, served)
        upstream_calls = sum(1 for r in fake.requests if r.path == "/v1/chat/completions")
    finally:
        proxy.stop()
    assert 0 < during[200] < 300 and during[503] == 300 - during[200], during
    assert recorded == served
    assert upstream_calls == served


@pytest.mark.parametrize(
    "after_ms",
    [
        pytest.param("600000", id="journal"),  # only the dead worker's journal knows them
        pytest.param("0", id="bus"),  # each accepted record went to the database first
    ],
)
def test_a_killed_worker_leaves_a_flagged_row_per_request_in_flight(
    tmp_path: Path, fake: FakeUpstream, after_ms: str
) -> None:
    env = {**UNLIMITED, "HTTP_CACHE_ENABLED": "false", "ACCEPTED_RECORD_AFTER_MS": after_ms}
    cred = provision(env, tmp_path, fake.base_url)
    db = tmp_path / "llm-proxy.db"
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=1).start()
    failed: list[BaseException] = []
    statuses: list[int] = []

    try:
        done = send(proxy.url, cred, 10)
        threads = [
            threading.Thread(target=hold_stream, args=(proxy.url, cred, statuses, failed))
            for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while sum(1 for r in fake.requests if r.path == "/v1/chat/completions") < 13:
            assert time.monotonic() < deadline, "the streams never reached the upstream"
            time.sleep(0.05)
        assert proxy.proc is not None
        master = proxy.proc.pid
        (worker,) = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        os.kill(int(worker), signal.SIGKILL)
        for thread in threads:
            thread.join(timeout=30)
        fake.release.set()
        accepted = wait_rows(db, 0, 3)
    finally:
        fake.release.set()
        proxy.stop()
    assert done == Counter({200: 10}) and len(failed) == 3
    assert (rows(db, 200), accepted) == (10, 3)
    assert request_count(db, cred.token_id) == 13


def test_a_long_request_is_recorded_while_it_runs_and_the_journal_empties(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    """Past ACCEPTED_RECORD_AFTER_MS a running request's accepted record leaves the journal for
    the database; once every request is over, no journal segment holds anything."""
    env = {**UNLIMITED, "HTTP_CACHE_ENABLED": "false", "ACCEPTED_RECORD_AFTER_MS": "200"}
    cred = provision(env, tmp_path, fake.base_url)
    db = tmp_path / "llm-proxy.db"
    journal = journal_dir("", f"{db}-spool")
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=1).start()
    fake.release.clear()
    answers: list[int] = []
    failed: list[BaseException] = []
    thread = threading.Thread(target=hold_stream, args=(proxy.url, cred, answers, failed))
    try:
        assert send(proxy.url, cred, 20) == Counter({200: 20})
        thread.start()
        # held by the upstream: only the promoted accepted record can make this row
        assert wait_rows(db, 0, 1, timeout=60) == 1
        assert thread.is_alive()
        fake.release.set()
        thread.join(timeout=60)
        assert (answers, failed) == ([200], [])
        assert wait_rows(db, 200, 21, timeout=60) == 21
        assert rows(db, 0) == 0, "the final replaced the accepted row"
        deadline = time.monotonic() + 30
        while True:
            lines = [
                line
                for path in journal.glob("*.journal")
                for line in path.read_bytes().splitlines()
            ]
            begun = {json.loads(line[1:])["event_id"] for line in lines if line[:1] == b"+"}
            done = {line[1:].decode() for line in lines if line[:1] == b"-"}
            if len(list(journal.glob("*.journal"))) == 1 and len(begun) == 21 and begun <= done:
                break
            assert time.monotonic() < deadline, lines
            time.sleep(0.2)
    finally:
        fake.release.set()
        proxy.stop()
    assert request_count(db, cred.token_id) == 21
    assert not journal.exists(), "a worker that stopped cleanly leaves no journal"
