"""Embeddings request batching (BATCHING_ENABLED): concurrent requests with the same project,
model and parameters are merged into one upstream call and split back exactly, in order.

A request joins the open batch of its key or opens one; a batch goes upstream when its window
(BATCH_WINDOW_MS) ends or when it holds BATCH_MAX_SIZE requests. The call runs in a task of its
own, so a caller that leaves takes nothing from the others. A batch of one is sent unchanged.
What a merged answer is, and how its usage is shared, is in docs/configuration.md ("Request
batching"): each caller gets its own inputs' embeddings, re-indexed from 0, and a share of the
upstream's token counts proportional to the size of its inputs, rounded so the shares add up to
the upstream's totals exactly.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.exchange import Exchange, Header
from proxy.headers import response_headers, upstream_headers
from proxy.overhead import head_timing
from proxy.upstream import Upstream, read_chunk
from proxy.usage import Usage, estimate, estimate_prompt_tokens, usage_from_json
from shared.config import Settings
from shared.errors import LLMProxyError, UpstreamError

ENDPOINT = "/v1/embeddings"
_MAX_ANSWER = 256 << 20  # bytes of a merged answer read before giving up on it
# client headers that change what the upstream does; requests differing in them never merge
_KEY_HEADERS = frozenset({b"openai-organization", b"openai-project", b"openai-beta"})
_DROPPED_FROM_MERGED = frozenset({b"content-length", b"x-request-id"})


@dataclass(slots=True)
class Outcome:
    """What one caller is answered: status, headers (before ours) and body, and its usage."""

    status: int
    headers: list[Header]
    body: bytes
    usage: Usage
    size: int  # requests in the upstream call that served it
    upstream_ms: float


@dataclass(slots=True)
class _Member:
    ex: Exchange
    items: list[Any]
    weight: int
    answer: asyncio.Future[Outcome]


@dataclass(slots=True)
class _Batch:
    key: bytes
    params: dict[str, Any]
    members: list[_Member] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class Plan:
    """A request that may be merged: its key, parameters without ``input``, and its inputs."""

    key: bytes
    params: dict[str, Any]
    items: list[Any]
    weight: int


def plan_merge(ex: Exchange) -> Plan | None:
    """The merge plan for an embeddings request, or None when it must go alone (a body that is
    not a JSON object with a model and a list-shaped input of one kind)."""
    body, cred = ex.body, ex.cred
    if not isinstance(body, bytes) or cred is None:
        return None
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), str):
        return None
    items, kind = _items(obj.get("input"))
    if items is None:
        return None
    params = {k: v for k, v in obj.items() if k != "input"}
    headers = sorted((n, v) for n, v in ex.scope["headers"] if n in _KEY_HEADERS)
    try:
        shape = orjson.dumps(params, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # too deep to write back: not ours to merge
        return None
    key = b"\0".join(
        [cred.project_id.encode(), cred.base_url.encode(), kind, shape, repr(headers).encode()]
    )
    weight = sum(_size(item) for item in items)
    return Plan(key, params, items, weight)


def _items(value: Any) -> tuple[list[Any] | None, bytes]:
    """The request's inputs as a list of one kind: texts, or token arrays."""
    if isinstance(value, str):
        return [value], b"text"
    if not isinstance(value, list) or not value:
        return None, b""
    if all(isinstance(v, str) for v in value):
        return value, b"text"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [value], b"tokens"  # one input given as token ids
    if all(isinstance(v, list) and v and all(_token(t) for t in v) for v in value):
        return value, b"tokens"
    return None, b""


def _token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _size(item: Any) -> int:
    return max(len(item.encode()) if isinstance(item, str) else len(item), 1)


def shares(total: int, weights: list[int]) -> list[int]:
    """``total`` split in proportion to ``weights``; the largest remainders get the leftover
    units, earlier callers first on ties, so the shares always add up to ``total``."""
    whole = sum(weights)
    if whole <= 0:
        return [total] + [0] * (len(weights) - 1)
    exact = [total * w for w in weights]
    out = [e // whole for e in exact]
    left = total - sum(out)
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] % whole), i))
    for i in order[:left]:
        out[i] += 1
    return out


class Batcher:
    """One per worker: the open batches by key and the calls in flight."""

    def __init__(self, settings: Settings, upstream: Upstream) -> None:
        self.upstream = upstream
        self.window = settings.batch_window_ms / 1000
        self.max_size = settings.batch_max_size
        self.max_queue = settings.batch_max_queue_size
        self.forward_org = settings.forward_openai_org_headers
        self.open: dict[bytes, _Batch] = {}
        self.queued = 0  # requests waiting in open batches
        self._calls: set[asyncio.Task[None]] = set()

    def has_room(self) -> bool:
        return self.queued < self.max_queue

    async def forward(self, ex: Exchange, p: Plan) -> None:
        """Answer ``ex`` from the batch it joins (raises what the upstream call raised)."""
        loop = asyncio.get_running_loop()
        batch = self.open.get(p.key)
        if batch is None:
            batch = self.open[p.key] = _Batch(p.key, p.params)
            batch.timer = loop.call_later(self.window, self._flush, batch)
        member = _Member(ex, p.items, p.weight, loop.create_future())
        batch.members.append(member)
        self.queued += 1
        if len(batch.members) >= self.max_size:
            self._flush(batch)
        ex.request_bytes = len(ex.body) if isinstance(ex.body, bytes) else 0
        outcome = await asyncio.shield(member.answer)
        if ex.marks is not None:  # the wait for the batch counts as upstream time here
            ex.marks.append(("upstream_first_byte", time.perf_counter()))
        ex.status = outcome.status
        ex.usage = outcome.usage
        ex.upstream_ms = outcome.upstream_ms
        ex.response_bytes = len(outcome.body)
        headers = [
            *outcome.headers,
            (b"content-length", str(len(outcome.body)).encode()),
            # the wait for the batch to fill is the proxy's time: it is what batching costs
            (b"server-timing", head_timing(ex, outcome.upstream_ms)),
        ]
        if outcome.size > 1:
            headers.append((b"x-llm-proxy-batch", str(outcome.size).encode()))
        headers += ex.extra
        await ex.send({"type": "http.response.start", "status": outcome.status, "headers": headers})
        ex.response_started = True
        ex.ttfb_ms = (time.perf_counter() - ex.started) * 1000
        await ex.send({"type": "http.response.body", "body": outcome.body, "more_body": False})
        ex.written_at = time.perf_counter()
        if ex.marks is not None:
            ex.marks.append(("stream", time.perf_counter()))

    def _flush(self, batch: _Batch) -> None:
        if self.open.get(batch.key) is batch:
            del self.open[batch.key]
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        self.queued -= len(batch.members)
        task = asyncio.get_running_loop().create_task(self._call(batch))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _call(self, batch: _Batch) -> None:
        members = batch.members
        try:
            outcomes = await self._send(batch)
        except LLMProxyError as exc:
            for m in members:
                if not m.answer.done():
                    m.answer.set_exception(exc)
            return
        except BaseException as exc:  # never leave a caller waiting
            for m in members:
                if not m.answer.done():
                    m.answer.set_exception(UpstreamError())
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for m, outcome in zip(members, outcomes, strict=True):
            if not m.answer.done():
                m.answer.set_result(outcome)

    async def _send(self, batch: _Batch) -> list[Outcome]:
        members = batch.members
        first = members[0].ex
        cred, route = first.cred, first.route
        assert cred is not None and route is not None and isinstance(first.body, bytes)
        if len(members) == 1:
            body = first.body
        else:
            merged = [item for m in members for item in m.items]
            body = orjson.dumps({**batch.params, "input": merged})
        headers = upstream_headers(
            first.scope["headers"],
            cred.provider,
            cred.api_key,
            first.request_id,
            forward_org=self.forward_org,
        )
        started = time.perf_counter()
        response = await self.upstream.request(
            "POST", cred.base_url, route.rest.encode(), headers, body
        )
        try:
            chunks, size = [], 0
            while chunk := await read_chunk(response, 1 << 16):
                size += len(chunk)
                if size > _MAX_ANSWER:
                    raise UpstreamError("The upstream's embeddings answer is too large.")
                chunks.append(chunk)
        finally:
            response.release()
        answer = b"".join(chunks)
        upstream_ms = (time.perf_counter() - started) * 1000
        status = response.status
        if len(members) == 1:
            kept = response_headers(response.raw_headers, keep_length=False)
            usage = usage_from_json(answer) if status == 200 else Usage()
            if status == 200 and not usage.found:
                usage = estimate(usage, body, 0)
            return [Outcome(status, kept, answer, usage, 1, upstream_ms)]
        kept = [
            (n, v)
            for n, v in response_headers(response.raw_headers, keep_length=False)
            if n not in _DROPPED_FROM_MERGED
        ]
        if status != 200:  # the same error for everyone who shared the call
            return [
                Outcome(status, kept, answer, Usage(), len(members), upstream_ms) for _ in members
            ]
        return _split(answer, members, kept, upstream_ms)


def _split(
    answer: bytes, members: list[_Member], headers: list[Header], upstream_ms: float
) -> list[Outcome]:
    """Each caller's embeddings, re-indexed from 0, and its share of the usage."""
    try:
        obj = orjson.loads(answer)
    except orjson.JSONDecodeError:
        raise UpstreamError("The upstream's embeddings answer is not JSON.") from None
    data = obj.get("data") if isinstance(obj, dict) else None
    count = sum(len(m.items) for m in members)
    by_index: dict[int, Any] = {}
    if isinstance(data, list):
        for entry in data:
            if isinstance(entry, dict) and _token(entry.get("index")):
                by_index[entry["index"]] = entry
    if sorted(by_index) != list(range(count)):
        raise UpstreamError("The upstream's embeddings answer does not match its inputs.")
    reported = Usage()
    reported.absorb(obj)  # absurd figures come back clamped and flagged
    weights = [m.weight for m in members]
    if reported.found:
        prompt = shares(reported.prompt_tokens, weights)
        total = shares(reported.total_tokens, weights)
    else:  # never a silent 0: each caller's own estimate, flagged
        prompt = total = [_estimate(m) for m in members]
        reported.source = "estimated"
    model = reported.model
    out, offset = [], 0
    for i, m in enumerate(members):
        mine = [{**by_index[offset + j], "index": j} for j in range(len(m.items))]
        offset += len(m.items)
        body = orjson.dumps(
            {
                **{k: v for k, v in obj.items() if k not in ("data", "usage")},
                "data": mine,
                "usage": {"prompt_tokens": prompt[i], "total_tokens": total[i]},
            }
        )
        used = Usage(
            model=model,
            prompt_tokens=prompt[i],
            total_tokens=total[i],
            found=reported.found,
            source=reported.source,
        )
        out.append(Outcome(200, headers, body, used, len(members), upstream_ms))
    return out


def _estimate(member: _Member) -> int:
    """Tokens of one caller's inputs when the upstream reports none: token arrays count
    exactly, texts as the request body's estimate does."""
    body = member.ex.body if isinstance(member.ex.body, bytes) else b""
    if member.items and not isinstance(member.items[0], str):
        return sum(len(item) for item in member.items)
    return estimate_prompt_tokens(body)
