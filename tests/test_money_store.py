"""Costs and rollups in both stores, through both write paths (the dispatcher's record_batch and
the embedded bus's record_events): exact sums, once per request even when a batch is delivered
again or a final replaces its accepted record, and unknown models unpriced, never $0."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from shared.clock import new_id, utcnow
from shared.events import ACCEPTED, UNPRICED, RequestEvent
from shared.money.prices import PriceRow, row_from_dict
from shared.store import SqlStore
from tests.test_store_contract import event, project, token

Write = Callable[[SqlStore, Sequence[RequestEvent]], Awaitable[object]]


async def _batch(store: SqlStore, events: Sequence[RequestEvent]) -> object:
    return await store.record_batch(events)


async def _embedded(store: SqlStore, events: Sequence[RequestEvent]) -> object:
    return await store.record_events(events)


@pytest.fixture(params=["dispatcher", "embedded"])
def write(request: pytest.FixtureRequest) -> Write:
    return _batch if request.param == "dispatcher" else _embedded


def _copy(events: Sequence[RequestEvent]) -> list[RequestEvent]:
    """What a redelivery brings: the same events decoded afresh."""
    return [RequestEvent.from_bytes(e.to_bytes()) for e in events]


async def _sums(store: SqlStore, token_id: str) -> tuple[int, int, int, int, int]:
    """(Σ priced event costs, unpriced events, Σ rollup costs, rollup unpriced, rollup reqs)."""
    events = await store.list_request_events(token_id=token_id, limit=10_000)
    finals = [e for e in events if e.phase != ACCEPTED]
    priced = sum(e.cost_picousd for e in finals if e.cost_picousd != UNPRICED)
    unpriced = sum(e.cost_picousd == UNPRICED for e in finals)
    rollups = await store.list_rollups(token_id=token_id)
    return (
        priced,
        unpriced,
        sum(r.totals.cost_picousd for r in rollups),
        sum(r.totals.unpriced for r in rollups),
        sum(r.totals.requests + r.totals.rejected for r in rollups),
    )


async def test_costs_rollups_and_redelivery(store: SqlStore, write: Write) -> None:
    proj = await store.create_project(project())
    tok = await store.create_token(token(proj.id))
    mini = {"model": "gpt-4o-mini-2024-07-18", "prompt_tokens": 1000, "completion_tokens": 200}
    batch = [
        event(tok, **mini, total_tokens=1200, cached_tokens=600),
        event(tok, model="gpt-4.1", prompt_tokens=10, completion_tokens=90, reasoning_tokens=50),
        event(tok, model="house-model-7", prompt_tokens=5, completion_tokens=5),  # no price
        event(tok, **mini, cache_status="hit"),  # served from our cache: cost nothing
        event(tok, method="GET", path="/v1/models", model=""),
    ]
    await write(store, batch)
    await write(store, _copy(batch))  # delivered again: changes nothing

    events = {e.event_id: e for e in await store.list_request_events(token_id=tok.id)}
    costs = [events[e.event_id].cost_picousd for e in batch]
    # 400 plain input at 0.15, 600 cached at 0.075, 200 output at 0.60 ($/M)
    assert costs[0] == 400 * 150_000 + 600 * 75_000 + 200 * 600_000
    assert costs[1] == 10 * 2_000_000 + 90 * 8_000_000
    assert costs[2:] == [UNPRICED, 0, 0]
    assert events[batch[0].event_id].cached_tokens == 600
    assert events[batch[1].event_id].reasoning_tokens == 50

    priced, unpriced, rolled, rolled_unpriced, requests = await _sums(store, tok.id)
    assert (priced, unpriced) == (rolled, rolled_unpriced) == (sum(costs[:2]) + 0, 1)
    assert requests == len(batch)
    rows = await store.list_rollups(project_id=proj.id)
    by_model = {r.model: r.totals for r in rows}
    assert by_model["gpt-4o-mini-2024-07-18"].cache_hits == 1
    assert by_model["gpt-4o-mini-2024-07-18"].cached_tokens == 600 + 0
    assert by_model["house-model-7"].unpriced == 1


async def test_accepted_then_final_counts_once(store: SqlStore, write: Write) -> None:
    proj = await store.create_project(project())
    tok = await store.create_token(token(proj.id))
    final = event(tok, model="gpt-4o", prompt_tokens=100, completion_tokens=10)
    accepted = RequestEvent(**{**_fields(final), "phase": ACCEPTED, "status": 0})
    await write(store, [accepted])
    assert await store.list_rollups(token_id=tok.id) == []  # no usage yet
    await write(store, [final])
    await write(store, _copy([final]))
    both = event(tok, model="gpt-4o", prompt_tokens=7, completion_tokens=3)
    both_accepted = RequestEvent(**{**_fields(both), "phase": ACCEPTED, "status": 0})
    await write(store, [both_accepted, both])  # both records in one batch
    priced, unpriced, rolled, _, requests = await _sums(store, tok.id)
    expected = 100 * 2_500_000 + 10 * 10_000_000 + 7 * 2_500_000 + 3 * 10_000_000
    assert priced == rolled == expected
    assert (unpriced, requests) == (0, 2)


async def test_operator_and_project_prices(store: SqlStore, write: Write) -> None:
    proj = await store.create_project(project("a"))
    other = await store.create_project(project("b"))
    tok = await store.create_token(token(proj.id))
    tok_other = await store.create_token(token(other.id))
    start = utcnow() - timedelta(days=1)
    await store.set_prices(
        [
            row_from_dict({"model": "house-model-7", "input": "1", "output": "2"}),
            row_from_dict(  # a negotiated rate for one project, from yesterday on
                {
                    "model": "gpt-4o",
                    "input": "1.25",
                    "output": "5",
                    "project_id": proj.id,
                    "effective_from": start.isoformat(),
                }
            ),
        ]
    )
    # setting a row again at the same key replaces its rates
    await store.set_prices([row_from_dict({"model": "house-model-7", "input": "3", "output": "2"})])
    assert [(r.model, r.input) for r in await store.list_prices()] == [
        ("gpt-4o", 1_250_000),
        ("house-model-7", 3_000_000),
    ]
    usage = {"prompt_tokens": 10, "completion_tokens": 10}
    mine = event(tok, model="gpt-4o", **usage)
    theirs = event(tok_other, model="gpt-4o", **usage)
    old = event(tok, model="gpt-4o", ts=(start - timedelta(hours=1)).timestamp(), **usage)
    house = event(tok, model="house-model-7", **usage)
    await write(store, [mine, theirs, old, house])
    got = {e.event_id: e.cost_picousd for e in await store.list_request_events(limit=100)}
    assert got[mine.event_id] == 10 * 1_250_000 + 10 * 5_000_000
    assert got[theirs.event_id] == got[old.event_id] == 10 * 2_500_000 + 10 * 10_000_000
    assert got[house.event_id] == 10 * 3_000_000 + 10 * 2_000_000


async def test_concurrent_batches_sum_exactly(pg_store: SqlStore) -> None:
    """Several writers on the same rollup rows at once (as dispatchers are): no deadlock, no
    lost update; the rollups equal the events to the pico-dollar."""
    proj = await pg_store.create_project(project(f"c-{new_id()[:8]}"))
    toks = [await pg_store.create_token(token(proj.id)) for _ in range(3)]
    rng = random.Random(7)
    models = ["gpt-4o-mini", "gpt-4o", "o3", "claude-sonnet-4", "house-model-7"]
    batches = [
        [
            event(
                rng.choice(toks),
                model=rng.choice(models),
                prompt_tokens=rng.randrange(0, 5000),
                completion_tokens=rng.randrange(0, 2000),
                cached_tokens=rng.randrange(0, 100),
            )
            for _ in range(40)
        ]
        for _ in range(8)
    ]
    await asyncio.gather(*(pg_store.record_batch(b) for b in batches))
    await asyncio.gather(*(pg_store.record_batch(_copy(b)) for b in batches[:4]))
    for tok in toks:
        priced, unpriced, rolled, rolled_unpriced, requests = await _sums(pg_store, tok.id)
        assert (priced, unpriced) == (rolled, rolled_unpriced)
        assert requests == sum(e.token_id == tok.id for b in batches for e in b)


async def test_rollups_by_day(store: SqlStore) -> None:
    proj = await store.create_project(project())
    tok = await store.create_token(token(proj.id))
    day1 = datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC).timestamp()
    day2 = day1 + 2
    events = [event(tok, model="gpt-4o", prompt_tokens=1, ts=t) for t in (day1, day2, day2)]
    await store.record_batch(events)
    rows = await store.list_rollups(token_id=tok.id)
    assert [(str(r.day), r.totals.requests) for r in rows] == [
        ("2026-03-01", 1),
        ("2026-03-02", 2),
    ]
    since = await store.list_rollups(token_id=tok.id, since=datetime(2026, 3, 2, 12, tzinfo=UTC))
    assert [str(r.day) for r in since] == ["2026-03-02"]


def _fields(e: RequestEvent) -> dict[str, object]:
    return {name: getattr(e, name) for name in e.__dataclass_fields__}


def test_price_rows_are_values() -> None:
    row = row_from_dict({"model": "m", "input": "1", "output": "2"})
    assert row == PriceRow("m", 1_000_000, 2_000_000, row.effective_from)
