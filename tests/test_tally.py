"""The tally writes what prometheus_client itself would have: its own direct updates are the
oracle, compared through the exposition text, inside an event loop and outside one."""

from __future__ import annotations

import asyncio
import math

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from proxy.tally import Tally

BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0)
amounts = st.one_of(
    st.floats(min_value=0, max_value=100, allow_nan=False),
    st.sampled_from([*BUCKETS, 0.0, math.inf, math.nan]),
)
updates = st.lists(
    st.tuples(st.sampled_from(["inc", "observe"]), st.sampled_from(["a", "b"]), amounts),
    max_size=60,
)


def _families(registry: CollectorRegistry) -> tuple[Counter, Histogram]:
    counter = Counter("llm_proxy_t_total", "t", ["k"], registry=registry)
    histogram = Histogram("llm_proxy_t_seconds", "t", ["k"], buckets=BUCKETS, registry=registry)
    return counter, histogram


def _apply(ops: list[tuple[str, str, float]], tally: Tally | None) -> bytes:
    registry = CollectorRegistry()
    counter, histogram = _families(registry)
    for op, key, amount in ops:
        if op == "inc":
            amount = 1.0 if math.isnan(amount) or math.isinf(amount) else amount
            if tally is None:
                counter.labels(key).inc(amount)
            else:
                tally.inc(counter.labels(key), amount)
        elif tally is None:
            histogram.labels(key).observe(amount)
        else:
            tally.observe(histogram.labels(key), amount)
    if tally is not None:
        tally.flush()
    return generate_latest(registry)


def _text(raw: bytes) -> list[str]:
    return [line for line in raw.decode().splitlines() if "_created" not in line]


@settings(max_examples=150, deadline=None)
@given(updates)
def test_a_tally_outside_a_loop_writes_what_prometheus_writes(
    ops: list[tuple[str, str, float]],
) -> None:
    assert _text(_apply(ops, Tally())) == _text(_apply(ops, None))


@settings(max_examples=100, deadline=None)
@given(updates)
def test_a_tally_in_a_loop_writes_once_the_pass_ends(ops: list[tuple[str, str, float]]) -> None:
    async def go() -> tuple[bytes, bytes]:
        registry = CollectorRegistry()
        counter, _ = _families(registry)
        tally = Tally()
        tally.inc(counter.labels("a"), 2.0)
        before = generate_latest(registry)  # the same pass: not written yet
        await asyncio.sleep(0)  # the pass ends: written
        assert 'llm_proxy_t_total{k="a"} 2.0' in generate_latest(registry).decode()
        return before, _apply(ops, tally)

    before, tallied = asyncio.run(go())
    assert 'llm_proxy_t_total{k="a"} 0.0' in before.decode()
    assert _text(tallied) == _text(_apply(ops, None))
