"""The ledger tests' kit: an upstream that bills what it really sends, per request; a mixed
workload of every kind of answer; and the check that the rows and counters match the bill."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.proxy_process import Provisioned
from tests.upstream_script import Reply, ScriptedUpstream, asks_usage, chat_chunk

ABSURD = {"prompt_tokens": 2**64 - 1, "completion_tokens": 999_999_999, "total_tokens": -1}
CLAMPED_TOKENS = 10**9 + 999_999_999  # the absurd answer once bounded (docs/operations.md)
BIG = 1_200_000  # past the 1 MiB the proxy reads whole: answers and request bodies
ABORT_PROMPT = "a" * 396  # with "user": 400 characters, an estimate of 100 prompt tokens

#: (prompt, completion) the upstream reports, by the kind of answer
JSON_USAGE = (11, 7)
STREAM_USAGE = (9, 5)
BIG_ANSWER_USAGE = (1_000, 300_000)
BIG_PROMPT_USAGE = (300_000, 5)


@dataclass
class Bill:
    """What the upstream did, by tag (the ``user`` field of the request body): calls it
    answered and tokens in the usage it actually finished sending."""

    calls: Counter[str] = field(default_factory=Counter)
    tokens: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, tag: str) -> None:
        with self.lock:
            self.calls[tag] += 1

    def sent(self, tag: str, tokens: int) -> None:
        with self.lock:
            self.tokens[tag] += tokens

    def copy(self) -> Bill:
        """The bill so far (held replies released at teardown must not add to it)."""
        with self.lock:
            return Bill(Counter(self.calls), Counter(self.tokens))


def billing_upstream() -> tuple[ScriptedUpstream, Bill]:
    """A scripted upstream for the models the workload names, and its bill."""
    upstream, bill = ScriptedUpstream(), Bill()

    def script(usage: tuple[int, int] | dict[str, int], content: str = "hello") -> Any:
        def reply(body: Any) -> Reply:
            tag = str(body.get("user", ""))
            bill.call(tag)
            report = (
                usage
                if isinstance(usage, dict)
                else {"prompt_tokens": usage[0], "completion_tokens": usage[1]}
            )
            model = str(body["model"])
            if body.get("stream"):
                asked = asks_usage(body)
                pieces = [b"data: " + chat_chunk(model, f"t{i}") + b"\n\n" for i in range(3)]
                if asked:
                    pieces.append(b"data: " + chat_chunk(model, None, report) + b"\n\n")
                pieces.append(b"data: [DONE]\n\n")
                tokens = _sum(report) if asked else 0
                hold = 1 if model == "hold" else None
                return Reply(pieces, hold_after=hold, on_sent=lambda: bill.sent(tag, tokens))
            answer = {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
                "usage": report,
            }
            return Reply(
                [json.dumps(answer).encode()],
                content_type="application/json",
                on_sent=lambda: bill.sent(tag, _sum(report)),
            )

        return reply

    def failing(status: int) -> Any:
        def reply(body: Any) -> Reply:
            bill.call(str(body.get("user", "")))
            error = {"error": {"message": f"upstream says {status}", "type": "t", "code": "x"}}
            return Reply([json.dumps(error).encode()], "application/json", status)

        return reply

    upstream.scripts.update(
        {
            "chat": script(JSON_USAGE),
            "stream": script(STREAM_USAGE),
            "hold": script(STREAM_USAGE),
            "big-answer": script(BIG_ANSWER_USAGE, "x" * BIG),
            "big-prompt": script(BIG_PROMPT_USAGE),
            "absurd": script(ABSURD),
            "fail-400": failing(400),
            "fail-500": failing(500),
        }
    )
    return upstream, bill


def _sum(report: dict[str, int]) -> int:
    return report["prompt_tokens"] + report["completion_tokens"]


@dataclass
class Sent:
    """One request as the client saw it."""

    request_id: str
    tag: str
    token_id: str
    kind: str
    status: int
    hit: bool = False
    estimate: int | None = None  # the documented estimate, for an aborted stream


@dataclass
class Ledger:
    """Every request the clients sent and what they saw; requests held when a worker died."""

    sent: list[Sent] = field(default_factory=list)
    held: list[str] = field(default_factory=list)  # request ids (tags) in flight at the kill
    wrong: list[str] = field(default_factory=list)  # what a client saw that it should not

    def statuses(self, token_id: str) -> Counter[int]:
        return Counter(s.status for s in self.sent if s.token_id == token_id)

    def admitted(self, token_id: str) -> int:
        """Requests the proxy let through (everything but its own quota refusals)."""
        return sum(1 for s in self.sent if s.token_id == token_id and s.status != 429)


KINDS = (
    "json",
    "stream-absent",
    "stream-true",
    "stream-false",
    "fail-500",
    "fail-400",
    "quota",
    "big-answer",
    "big-prompt",
    "abort",
    "cache-pair",
    "quota",
    "stream-cache-pair",
)


async def traffic(
    urls: list[str],
    quota: Provisioned,
    free: Provisioned,
    n: int,
    ledger: Ledger,
    phase: str,
    *,
    quota_share: bool = True,
    absurd: bool = False,
) -> None:
    """``n`` requests of every kind in ``KINDS`` (the quota'd token's only with
    ``quota_share``), 16 at a time; with ``absurd`` one answer with absurd usage first."""
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(i: int) -> None:
            kind = KINDS[i % len(KINDS)]
            if kind == "quota" and not quota_share:
                kind = "json"
            await send(client, urls[i % len(urls)], quota, free, kind, f"{phase}-{i}", ledger)

        if absurd:
            await send(client, urls[0], quota, free, "absurd", f"{phase}-absurd", ledger)
        for start in range(0, n, 16):
            await asyncio.gather(*(one(i) for i in range(start, min(start + 16, n))))


async def send(
    client: httpx.AsyncClient,
    url: str,
    quota: Provisioned,
    free: Provisioned,
    kind: str,
    rid: str,
    ledger: Ledger,
) -> None:
    cred = quota if kind == "quota" else free
    headers = {"Authorization": f"Bearer {cred.token}", "X-Request-ID": rid}
    body: dict[str, Any] = {
        "model": "chat",
        "user": rid,
        "messages": [{"role": "user", "content": rid}],
    }
    url += "/v1/chat/completions"
    if kind in ("fail-500", "fail-400", "big-answer", "absurd"):
        body["model"] = kind
    elif kind == "big-prompt":
        body.update(model="big-prompt", stream=True)
        body["messages"] = [{"role": "user", "content": "p" * BIG}]
    elif kind.startswith("stream"):
        body.update(model="stream", stream=True)
        if kind != "stream-absent":
            body["stream_options"] = {"include_usage": kind == "stream-true"}
    elif kind == "abort":
        body.update(model="hold", stream=True)
        body["messages"] = [{"role": "user", "content": ABORT_PROMPT}]
        async with client.stream("POST", url, json=body, headers=headers) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    break  # the first content event arrived: the client gives up
        estimate = math.ceil((4 + len(ABORT_PROMPT)) / 4) + 1  # prompt + one delta delivered
        ledger.sent.append(Sent(rid, rid, cred.token_id, kind, resp.status_code, False, estimate))
        return
    elif kind.endswith("cache-pair"):
        if kind.startswith("stream"):
            body.update(model="stream", stream=True)
        await _cache_pair(url, cred, rid, body, ledger)
        return
    if body.get("stream"):
        async with client.stream("POST", url, json=body, headers=headers) as resp:
            text = (await resp.aread()).decode()
        if resp.status_code == 200 and "[DONE]" not in text:
            ledger.wrong.append(f"{rid}: stream cut")
        if ('"usage":{' in text) != (kind == "stream-true"):
            ledger.wrong.append(f"{rid} ({kind}): the usage chunk shown or hidden wrongly")
    else:
        resp = await client.post(url, json=body, headers=headers)
    ledger.sent.append(Sent(rid, rid, cred.token_id, kind, resp.status_code))


async def _cache_pair(
    url: str, cred: Provisioned, rid: str, body: dict[str, Any], ledger: Ledger
) -> None:
    """The same cacheable request twice on one connection (so on one worker, whose own cache
    has it when the in-memory backend is used): a miss, then a hit."""
    limits = httpx.Limits(max_connections=1)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        for n, suffix in enumerate(("", "-again")):
            resp = await client.post(
                url,
                json=body,
                headers={
                    "Authorization": f"Bearer {cred.token}",
                    "X-Request-ID": rid + suffix,
                    "X-Proxy-Cache-TTL": "300",
                },
            )
            hit = resp.headers.get("x-proxy-cache") == "hit"
            if n == 0 and hit:
                ledger.wrong.append(f"{rid}: a hit before anything was stored")
            if body.get("stream") and ('"usage":{' in resp.text or "[DONE]" not in resp.text):
                ledger.wrong.append(f"{rid}{suffix}: a cached stream changed")
            status = resp.status_code
            ledger.sent.append(Sent(rid + suffix, rid, cred.token_id, "cache", status, hit))


def hold_streams(url: str, cred: Provisioned, rids: list[str]) -> tuple[list[Any], list[str]]:
    """Streams the upstream holds after their first event, one thread each; the threads and
    the ids of those whose connection failed (filled in as they end)."""
    failed: list[str] = []

    def hold(rid: str) -> None:
        try:
            with httpx.stream(
                "POST",
                f"{url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {cred.token}", "X-Request-ID": rid},
                json={"model": "hold", "user": rid, "messages": [], "stream": True},
                timeout=60,
            ) as resp:
                for _ in resp.iter_lines():
                    pass
        except httpx.HTTPError:
            failed.append(rid)

    threads = [threading.Thread(target=hold, args=(rid,)) for rid in rids]
    for thread in threads:
        thread.start()
    return threads, failed


@dataclass
class Recorded:
    """What the database holds: one tuple per request_events row, and the aggregates."""

    #: (request_id, token_id, status, phase, prompt + completion tokens, usage_source,
    #: cache_status, error)
    rows: list[tuple[str, str, int, str, int, str, str, str]]
    tokens: dict[str, tuple[int, int, int]]  # token id -> (requests, cache hits, tokens)
    projects: dict[str, tuple[int, int, int]]  # project id -> the same

    def accepted(self) -> int:
        return sum(1 for row in self.rows if row[3] == "accepted")


EVENTS_SQL = (
    "SELECT request_id, token_id, status, phase, prompt_tokens + completion_tokens, "
    "usage_source, cache_status, error FROM request_events"
)
COUNTERS_SQL = "SELECT id, request_count, cache_hit_count, prompt_tokens + completion_tokens FROM "


def recorded(conn: Any) -> Recorded:
    """Read through a DB-API connection (psycopg or sqlite3)."""
    rows = [
        (str(r[0]), str(r[1]), int(r[2]), str(r[3]), int(r[4]), str(r[5]), str(r[6]), str(r[7]))
        for r in conn.execute(EVENTS_SQL).fetchall()
    ]
    counters = []
    for table in ("tokens", "projects"):
        found = conn.execute(COUNTERS_SQL + table).fetchall()
        counters.append({str(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in found})
    return Recorded(rows, counters[0], counters[1])


def check(
    ledger: Ledger,
    bill: Bill,
    db: Recorded,
    quota: Provisioned,
    free: Provisioned,
    quota_limit: int,
) -> None:
    """The bill, the rows and the counters agree, request by request."""
    assert ledger.wrong == []
    held = set(ledger.held)
    by_id = {row[0]: row for row in db.rows}
    # every request once: each answered request and each request in flight at the kill
    assert len(by_id) == len(db.rows), "a request recorded twice"
    expected_ids = {s.request_id for s in ledger.sent} | held
    assert len(expected_ids) == len(ledger.sent) + len(held)
    assert set(by_id) == expected_ids, (
        sorted(expected_ids - set(by_id))[:10],
        sorted(set(by_id) - expected_ids)[:10],
    )
    statuses = Counter(s.status for s in ledger.sent)
    assert set(statuses) <= {200, 400, 429, 500}, statuses
    # the quota, exactly (and reached)
    assert ledger.statuses(quota.token_id)[200] == quota_limit
    assert ledger.statuses(quota.token_id)[429] > 0
    # flagged rows: the requests a killed worker had in flight, no usage known
    flagged = {rid for rid, row in by_id.items() if row[3] == "accepted"}
    assert flagged == held
    assert all(by_id[rid][4] == 0 for rid in held)
    # estimates: exactly the aborted streams, each as docs/operations.md says
    aborts = {s.request_id: s for s in ledger.sent if s.kind == "abort"}
    estimated = {rid: row for rid, row in by_id.items() if row[5] == "estimated"}
    assert set(estimated) == set(aborts)
    for rid, row in estimated.items():
        assert (row[2], row[7]) == (200, "client_disconnected"), row
        assert row[4] == aborts[rid].estimate, row
    # clamped: the absurd answer alone
    absurd = {s.request_id for s in ledger.sent if s.kind == "absurd"}
    clamped = {rid: row for rid, row in by_id.items() if row[5] == "clamped"}
    assert set(clamped) == absurd
    assert all(row[4] == CLAMPED_TOKENS for row in clamped.values())
    # cache hits: what the clients were told, never forwarded, no tokens
    hits = {s.request_id for s in ledger.sent if s.hit}
    assert {rid for rid, row in by_id.items() if row[6] == "hit"} == hits
    assert all(by_id[rid][4] == 0 for rid in hits)
    # the upstream answered each forwarded request once: everything but refusals and hits
    tag_of = {s.request_id: s.tag for s in ledger.sent} | {rid: rid for rid in held}
    forwarded = Counter(
        tag_of[rid] for rid, row in by_id.items() if row[2] != 429 and row[6] != "hit"
    )
    assert +bill.calls == forwarded
    # Σ the upstream reported = Σ in rows, per request (estimates and clamps apart)
    reported: Counter[str] = Counter()
    for rid, row in by_id.items():
        if not row[5]:
            reported[tag_of[rid]] += row[4]
    billed = Counter({tag: n for tag, n in bill.tokens.items() if tag not in absurd})
    assert +reported == +billed
    in_rows = sum(row[4] for row in db.rows)
    extra = sum(row[4] for row in estimated.values()) + sum(r[4] for r in clamped.values())
    assert in_rows == sum(billed.values()) + extra
    # = the counters of tokens and of projects
    assert sum(t for _, _, t in db.tokens.values()) == in_rows
    assert sum(t for _, _, t in db.projects.values()) == in_rows
    for cred in (quota, free):
        requests = ledger.admitted(cred.token_id) + (len(held) if cred is free else 0)
        tokens = sum(row[4] for row in db.rows if row[1] == cred.token_id)
        mine_hits = sum(1 for s in ledger.sent if s.hit and s.token_id == cred.token_id)
        assert db.tokens[cred.token_id] == (requests, mine_hits, tokens)
        assert db.projects[cred.project_id] == (requests, mine_hits, tokens)
