"""The state file parser (admin/state.py): any document either parses or is refused with a
StateError naming its place; what export renders parses back to the same values."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from admin.state import NEVER, StateError, parse, render

_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=12)
_documents = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "projects",
                    "version",
                    "name",
                    "tokens",
                    "label",
                    "rpm",
                    "max_requests",
                    "max_concurrency",
                    "base_url",
                    "active",
                    "api_key_env",
                    "expires_at",
                    "id",
                    "x",
                ]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_documents)
def test_any_document_parses_or_is_refused_with_its_place(doc: Any) -> None:
    text = yaml.safe_dump(doc)
    try:
        parse(text, "f.yaml")
    except StateError as exc:
        assert exc.message.split(":", 1)[0], exc.message  # a place before the reason
        assert "\n" not in exc.message


_limit = st.none() | st.integers(1, 2**40)
_token = st.fixed_dictionaries(
    {
        "label": st.text("abcxyz- ", min_size=1, max_size=8).map(str.strip).filter(bool),
        "max_requests": _limit,
        "rpm": st.none() | st.integers(0, 10_000),
        "max_concurrency": st.none() | st.integers(1, 100),
        "active": st.booleans(),
        "expires_at": st.just(NEVER)
        | st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
    }
)
_project = st.fixed_dictionaries(
    {
        "name": st.text("abcdef_-", min_size=1, max_size=10),
        "base_url": st.sampled_from(["https://a.example/v1", "http://127.0.0.1:9/x"]),
        "active": st.booleans(),
        "api_key_env": st.just("K"),
        "tokens": st.lists(_token, max_size=3, unique_by=lambda t: t["label"]),
    }
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_project, max_size=3, unique_by=lambda p: p["name"].strip()))
def test_what_export_renders_parses_back_to_the_same_values(projects: list[Any]) -> None:
    state = parse(render(projects), "f.yaml")
    assert [p.name for p in state.projects] == [p["name"].strip() for p in projects]
    for spec, raw in zip(state.projects, projects, strict=True):
        assert spec.values == {"base_url": raw["base_url"], "active": raw["active"]}
        assert spec.key is not None and spec.key.env == "K"
        assert spec.tokens is not None
        for token, t in zip(spec.tokens, raw["tokens"], strict=True):
            when = t["expires_at"]
            expected = None if when == NEVER else datetime.fromisoformat(when)
            assert token.label == t["label"]
            assert token.values == {**{k: t[k] for k in t if k not in ("label", "expires_at")},
                                    "expires_at": expected}  # fmt: skip
