"""Usage figures as pure functions: clamping, the tail of large bodies, estimates, injection."""

from __future__ import annotations

import json

import orjson
import pytest

from proxy.usage import (
    MAX_TOKENS,
    JsonTap,
    Usage,
    bills_tokens,
    estimate_prompt_tokens,
    inject_include_usage,
    usage_from_json,
)
from shared.events import RequestEvent


@pytest.mark.parametrize(
    ("reported", "figures", "source"),
    [
        ({"prompt_tokens": 3, "completion_tokens": 4}, (3, 4, 7), ""),
        ({"input_tokens": 3, "output_tokens": 4, "total_tokens": 9}, (3, 4, 9), ""),
        ({"prompt_tokens": 5.0, "total_tokens": 5}, (5, 0, 5), ""),
        (
            {"prompt_tokens": 2**64 - 1, "completion_tokens": 1},
            (MAX_TOKENS, 1, MAX_TOKENS + 1),
            "clamped",
        ),
        ({"prompt_tokens": -1, "completion_tokens": 2}, (0, 2, 2), "clamped"),
        ({"prompt_tokens": "7", "completion_tokens": True}, (0, 0, 0), "clamped"),
        ({"prompt_tokens": 1.5}, (0, 0, 0), "clamped"),
    ],
)
def test_reported_usage_is_taken_or_clamped_and_flagged(
    reported: dict[str, object], figures: tuple[int, int, int], source: str
) -> None:
    usage = usage_from_json(json.dumps({"model": "m", "usage": reported}).encode())
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == figures
    assert usage.source == source
    event = RequestEvent(
        "e", "r", 0.0, "p", "t", "POST", "/", 200, prompt_tokens=usage.prompt_tokens
    )
    assert RequestEvent.from_bytes(event.to_bytes()) == event  # always serialisable


def test_a_large_body_keeps_its_model_and_usage_from_head_and_tail() -> None:
    body = orjson.dumps(
        {
            "object": "list",
            "data": [{"embedding": [0.25] * 1000, "note": '{"usage": {}} \\"'} for _ in range(500)],
            "model": "emb-large",
            "usage": {"prompt_tokens": 77, "total_tokens": 77, "details": {"x": "}{"}},
        }
    )
    assert len(body) > 2 << 20
    tap = JsonTap()
    for i in range(0, len(body), 30_000):
        tap.feed(body[i : i + 30_000])
    usage = tap.usage()
    assert (usage.model, usage.prompt_tokens, usage.total_tokens, usage.found) == (
        "emb-large",
        77,
        77,
        True,
    )
    assert tap.whole() is None


def test_prompt_estimate_counts_the_text_four_characters_a_token() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "a" * 396}], "top_p": 1}
    assert estimate_prompt_tokens(orjson.dumps(body)) == 100
    assert estimate_prompt_tokens(b"not json at all!") == 4
    assert estimate_prompt_tokens(orjson.dumps({"input": ["abcd", ["efgh"]]})) == 2


def test_include_usage_is_forced_on_and_deep_bodies_left_alone() -> None:
    for options in (None, {}, {"include_usage": False}, {"include_usage": None}):
        body = {"model": "m", "stream": True}
        if options is not None:
            body["stream_options"] = options
        changed = inject_include_usage(orjson.dumps(body))
        assert changed is not None
        assert orjson.loads(changed)["stream_options"]["include_usage"] is True
    asked = orjson.dumps({"stream": True, "stream_options": {"include_usage": True}})
    assert inject_include_usage(asked) is None
    deep = b'{"stream": true, "x": ' + b"[" * 300 + b"]" * 300 + b"}"
    assert inject_include_usage(deep) is None
    assert inject_include_usage(b'{"stream": false}') is None


@pytest.mark.parametrize(
    ("method", "endpoint", "rest", "bills"),
    [
        ("POST", "/v1/chat/completions", "/chat/completions", True),
        ("POST", "/v1/responses", "/responses", True),
        ("POST", "/v1/responses", "/responses/resp_1/cancel", False),
        ("GET", "/v1/responses", "/responses", False),
        ("POST", "/v1/embeddings", "/embeddings", False),
    ],
)
def test_which_requests_bill_tokens(method: str, endpoint: str, rest: str, bills: bool) -> None:
    assert bills_tokens(method, endpoint, rest) is bills


def test_usage_absorbs_the_responses_api_completed_event() -> None:
    usage = Usage()
    event = {"type": "response.completed", "response": {"model": "r", "usage": {"input_tokens": 2}}}
    assert usage.absorb(event) and (usage.model, usage.prompt_tokens) == ("r", 2)
