"""The pure core of money: usage details read from answers, exact amounts, the price book's
choice of row, and a request's cost (table-driven, with Hypothesis for the amount parser)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.usage import Usage, usage_from_json
from proxy.usage_stream import SseUsage
from shared.events import UNPRICED, RequestEvent
from shared.money.amounts import AmountError, picos_to_usd, rate_from_usd, rate_to_usd
from shared.money.cost import cost_picos, event_cost
from shared.money.prices import SHIPPED, PriceBook, PriceRow, row_from_dict, shipped_rows

T0 = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (  # chat completions
            {
                "prompt_tokens": 100,
                "completion_tokens": 50,
                "total_tokens": 150,
                "prompt_tokens_details": {"cached_tokens": 64, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 32},
            },
            (100, 50, 64, 32, ""),
        ),
        (  # Responses API
            {
                "input_tokens": 12033,
                "input_tokens_details": {"cached_tokens": 11904},
                "output_tokens": 44,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 12077,
            },
            (12033, 44, 11904, 0, ""),
        ),
        ({"prompt_tokens": 5, "completion_tokens": 1}, (5, 1, 0, 0, "")),
        (  # a part larger than its whole is bounded by it and flagged
            {
                "prompt_tokens": 10,
                "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": 11},
                "completion_tokens_details": {"reasoning_tokens": 3},
            },
            (10, 2, 10, 2, "clamped"),
        ),
        (  # nonsense in details is flagged, not believed
            {
                "prompt_tokens": 10,
                "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": "many"},
            },
            (10, 2, 0, 0, "clamped"),
        ),
        ({"prompt_tokens": 3, "prompt_tokens_details": None}, (3, 0, 0, 0, "")),
    ],
)
def test_usage_details(usage: dict[str, object], expected: tuple[object, ...]) -> None:
    got = usage_from_json(orjson.dumps({"model": "m", "usage": usage}))
    assert got.found
    assert (
        got.prompt_tokens,
        got.completion_tokens,
        got.cached_tokens,
        got.reasoning_tokens,
        got.source,
    ) == expected


def test_streamed_response_completed_carries_details() -> None:
    completed = {
        "type": "response.completed",
        "response": {
            "model": "o4-mini",
            "usage": {
                "input_tokens": 40,
                "input_tokens_details": {"cached_tokens": 32},
                "output_tokens": 20,
                "output_tokens_details": {"reasoning_tokens": 12},
                "total_tokens": 60,
            },
        },
    }
    stream = (
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
        b'"delta":"hi"}\n\n'
        b"event: response.completed\ndata: " + orjson.dumps(completed) + b"\n\n"
    )
    for strip in (False, True):
        watcher = SseUsage(strip=strip, max_write=1 << 16)
        for i in range(0, len(stream), 7):  # cut anywhere
            watcher.feed(stream[i : i + 7])
        watcher.finish()
        usage = watcher.result()
        assert (usage.cached_tokens, usage.reasoning_tokens, usage.model) == (32, 12, "o4-mini")


@pytest.mark.parametrize(
    ("text", "micros"),
    [("0", 0), ("0.15", 150_000), ("2.50", 2_500_000), ("0.000001", 1), ("75", 75_000_000)],
)
def test_rates_parse_exactly(text: str, micros: int) -> None:
    assert rate_from_usd(text) == micros
    assert Decimal(rate_to_usd(micros) or "x") == Decimal(text)


@pytest.mark.parametrize("text", ["", "abc", "-1", "0.0000001", "NaN", "Infinity", "1e9"])
def test_bad_rates_are_refused(text: str) -> None:
    with pytest.raises(AmountError):
        rate_from_usd(text)


@given(st.decimals(min_value=0, max_value=10**6, places=6, allow_nan=False))
def test_rate_round_trip(value: Decimal) -> None:
    micros = rate_from_usd(str(value))
    assert Decimal(rate_to_usd(micros) or "x") == value


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_cost_text_is_exact(picos: int) -> None:
    assert Decimal(picos_to_usd(picos) or "x") * 10**12 == picos


def test_float_rates_are_refused_in_rows() -> None:
    with pytest.raises(AmountError, match="as text"):
        row_from_dict({"model": "m", "input": 0.1, "output": "1"})


ROW = PriceRow("m", input=2_500_000, output=10_000_000, effective_from=T0, cached_input=1_250_000)


def test_cost_prices_each_kind_at_its_rate() -> None:
    # 1000 prompt (400 cached), 500 completion (200 reasoning at the output rate)
    cost = cost_picos(ROW, prompt=1000, completion=500, cached=400, reasoning=200)
    assert cost == 600 * 2_500_000 + 400 * 1_250_000 + 500 * 10_000_000
    assert picos_to_usd(cost) == "0.007"
    with_reasoning = PriceRow("m", 1, 2, T0, reasoning=5)
    assert cost_picos(with_reasoning, prompt=0, completion=10, reasoning=4) == 6 * 2 + 4 * 5


def test_book_layers_and_times() -> None:
    later = datetime(2025, 6, 1, tzinfo=UTC)
    book = PriceBook(
        [
            PriceRow("m", 10, 10, T0, source=SHIPPED),
            PriceRow("m", 20, 20, later, source=SHIPPED),
            PriceRow("n", 1, 1, later),  # the operator's, global
            PriceRow("n", 2, 2, later, project_id="p1"),  # a negotiated rate
            PriceRow("n", 3, 3, T0, source=SHIPPED),
        ]
    )
    assert book.lookup("m", "p1", datetime(2025, 3, 1, tzinfo=UTC)).input == 10  # type: ignore[union-attr]
    assert book.lookup("m", "p1", later).input == 20  # type: ignore[union-attr]
    assert book.lookup("m", "", datetime(2024, 1, 1, tzinfo=UTC)) is None  # before any row
    assert book.lookup("n", "p1", later).input == 2  # type: ignore[union-attr]
    assert book.lookup("n", "p2", later).input == 1  # type: ignore[union-attr]
    # before the operator's rows take effect, the shipped row still applies
    assert book.lookup("n", "p2", datetime(2025, 2, 1, tzinfo=UTC)).input == 3  # type: ignore[union-attr]
    assert book.lookup("m-2024-08-06", "", later).input == 20  # type: ignore[union-attr]
    assert book.lookup("m-20241022", "", later).input == 20  # type: ignore[union-attr]
    assert book.lookup("mx", "", later) is None
    assert book.lookup("", "", later) is None


def test_shipped_table_reads_and_prices_common_models() -> None:
    rows = shipped_rows()
    models = {r.model for r in rows}
    for model in ("gpt-4o-mini", "gpt-4.1", "o3", "claude-sonnet-4", "gemini-2.5-flash"):
        assert model in models
    book = PriceBook(rows)
    now = datetime(2026, 12, 1, tzinfo=UTC)
    row = book.lookup("gpt-4o-mini-2024-07-18", "", now)
    assert row is not None and (row.input, row.cached_input, row.output) == (
        150_000,
        75_000,
        600_000,
    )
    o3 = book.lookup("o3", "", now)
    assert o3 is not None and o3.input == 2_000_000  # the June 2025 rate, not April's


def _event(**kw: object) -> RequestEvent:
    fields: dict[str, object] = {
        "event_id": "e",
        "request_id": "r",
        "ts": T0.timestamp() + 60,
        "project_id": "p",
        "token_id": "t",
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": 200,
        "model": "m",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
    }
    fields.update(kw)
    return RequestEvent(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({}, 10 * 2_500_000 + 5 * 10_000_000),
        ({"model": "unknown"}, UNPRICED),  # never $0
        ({"model": ""}, UNPRICED),
        ({"model": "unknown", "cache_status": "hit"}, 0),  # the upstream was not called
        ({"model": "", "prompt_tokens": 0, "completion_tokens": 0, "method": "GET"}, 0),
        ({"model": "", "prompt_tokens": 0, "completion_tokens": 0, "status": 429}, 0),
        ({"model": "x", "prompt_tokens": 0, "completion_tokens": 0}, UNPRICED),  # 2xx POST
        ({"ts": T0.timestamp() - 1}, UNPRICED),  # before the row took effect
    ],
)
def test_event_cost(kw: dict[str, object], expected: int) -> None:
    assert event_cost(_event(**kw), PriceBook([ROW])) == expected


def test_usage_defaults_keep_positional_construction() -> None:
    assert Usage("m", 1, 2, 3, True, "").cached_tokens == 0


def test_metric_labels_are_capped() -> None:
    from prometheus_client import CollectorRegistry

    from proxy.money_metrics import MoneyMetrics

    metrics = MoneyMetrics(CollectorRegistry(), max_pairs=2)
    assert metrics.labels("p", "a") == ("p", "a")
    assert metrics.labels("p", "b") == ("p", "b")
    assert metrics.labels("p", "c") == ("other", "other")
    assert metrics.labels("p", "a") == ("p", "a")  # a pair already seen keeps its labels
    book = PriceBook([ROW])
    metrics.observe(_event(model="zzz"), book)
    metrics.observe(_event(), book)
    assert metrics.unpriced.labels("other", "other")._value.get() == 1
    assert metrics.tokens.labels("other", "other", "prompt")._value.get() == 20  # both past the cap
