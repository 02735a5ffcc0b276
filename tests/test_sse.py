"""The SSE splitter and the stream usage reader: property tests over any events, any line-ending
style and any chunk boundaries, with the openai SDK's own SSE decoder as an oracle."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st
from openai._streaming import SSEDecoder

from proxy.sse import BOM, Piece, SseEvent, SseSplitter, parse_event
from proxy.usage_stream import SseUsage

ENDINGS = (b"\n", b"\r\n", b"\r")
# field values: any text without line ends (NUL kept out of ids by the spec, not by us)
text = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)))


@dataclass
class Spec:
    data: list[str]
    kind: str | None
    event_id: str | None
    retry: int | None
    comments: list[str]

    def expected(self) -> SseEvent:
        return SseEvent(
            self.kind or "message",
            "\n".join(self.data) if self.data else None,
            self.event_id,
            self.retry,
        )


specs = st.builds(
    Spec,
    data=st.lists(text, max_size=3),
    kind=st.none() | text.filter(lambda s: s != ""),
    event_id=st.none() | text.filter(lambda s: "\0" not in s),
    retry=st.none() | st.integers(0, 10**6),
    comments=st.lists(text, max_size=2),
)


def lines_of(spec: Spec) -> list[str]:
    out = [":" + c for c in spec.comments]
    if spec.kind is not None:
        out.append("event: " + spec.kind)
    if spec.event_id is not None:
        out.append("id: " + spec.event_id)
    if spec.retry is not None:
        out.append(f"retry: {spec.retry}")
    out += ["data: " + d for d in spec.data]
    return out or [":keep-alive"]


def serialise(events: list[list[str]], endings: list[bytes]) -> list[bytes]:
    """Each event's bytes: its lines and a blank line, line ends taken in turn from ``endings``.
    A CR is never followed by a lone LF (that pair is one CRLF line end)."""
    out, i, previous = [], 0, b""
    for lines in events:
        raw = b""
        for line in [*lines, ""]:
            ending = endings[i % len(endings)]
            i += 1
            if previous == b"\r" and ending == b"\n":
                ending = b"\r\n"
            raw += line.encode() + ending
            previous = ending
        out.append(raw)
    return out


def cut(stream: bytes, points: list[int]) -> list[bytes]:
    bounds = sorted({p % (len(stream) + 1) for p in points} | {0, len(stream)})
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def split_all(chunks: list[bytes], max_event: int = 1 << 20) -> list[list[Piece]]:
    """The pieces, grouped into events (a group is an event's start and its continuations)."""
    splitter = SseSplitter(max_event)
    pieces = [p for chunk in chunks for p in splitter.feed(chunk)]
    last = splitter.finish()
    if last is not None:
        pieces.append(last)
    groups: list[list[Piece]] = []
    for piece in pieces:
        if piece.start or not groups:
            groups.append([piece])
        else:
            groups[-1].append(piece)
    return groups


@settings(max_examples=300)
@given(
    st.lists(specs, min_size=1, max_size=6),
    st.lists(st.sampled_from(ENDINGS), min_size=1, max_size=4),
    st.lists(st.integers(0, 10**6), max_size=12),
    st.booleans(),
)
def test_split_is_byte_exact_and_each_event_parses_to_its_fields(
    events: list[Spec], endings: list[bytes], points: list[int], bom: bool
) -> None:
    raws = serialise([lines_of(e) for e in events], endings)
    stream = (BOM if bom else b"") + b"".join(raws)
    groups = split_all(cut(stream, points))
    assert b"".join(p.raw for g in groups for p in g) == stream
    assert len(groups) == len(events)
    for i, (group, spec) in enumerate(zip(groups, events, strict=True)):
        assert group[0].start and group[-1].end
        parsed = parse_event(b"".join(p.raw for p in group), first=i == 0)
        assert parsed == spec.expected()


@settings(max_examples=200)
@given(
    st.lists(st.lists(text, min_size=1, max_size=3), min_size=1, max_size=6),
    st.lists(st.none() | text.filter(lambda s: s != ""), min_size=6, max_size=6),
    st.lists(st.sampled_from(ENDINGS), min_size=1, max_size=4),
    st.lists(st.integers(0, 10**6), max_size=12),
)
def test_events_match_the_openai_sdk_decoder(
    datas: list[list[str]], kinds: list[str | None], endings: list[bytes], points: list[int]
) -> None:
    events = [Spec(d, k, None, None, []) for d, k in zip(datas, kinds, strict=False)]
    stream = b"".join(serialise([lines_of(e) for e in events], endings))
    oracle = [
        (sse.event or "message", sse.data)
        for sse in SSEDecoder().iter_bytes(iter(cut(stream, points)))
    ]
    ours = [parse_event(b"".join(p.raw for p in g)) for g in split_all(cut(stream, points))]
    assert [(e.type, e.data) for e in ours] == oracle


def test_an_event_larger_than_the_bound_goes_out_in_pieces_and_the_next_is_whole() -> None:
    big = b"data: " + b"x" * 5000 + b"\r\n\r\n"
    small = b"data: {}\r\n\r\n"
    splitter = SseSplitter(max_event=1000)
    pieces = [p for i in range(0, len(big), 700) for p in splitter.feed(big[i : i + 700])]
    pieces += splitter.feed(small)
    assert b"".join(p.raw for p in pieces) == big + small
    assert all(len(p.raw) <= 1000 + 700 for p in pieces)
    assert pieces[0].start and not pieces[0].end
    assert not pieces[-2].start and pieces[-2].end
    assert pieces[-1] == Piece(small)


def test_a_cr_that_ends_an_event_and_chunk_takes_the_next_lf_along() -> None:
    splitter = SseSplitter()
    first = splitter.feed(b"data: a\r\n\r")
    assert first == [Piece(b"data: a\r\n\r")]
    assert splitter.feed(b"\ndata: b\r\r") == [Piece(b"\n", start=False), Piece(b"data: b\r\r")]
    assert splitter.feed(b"data: c\n\n") == [Piece(b"data: c\n\n")]


def test_fields_per_the_spec() -> None:
    raw = (
        b"\xef\xbb\xbf: hello\nevent: delta\nid: 7\nretry: 30\nretry: x\ndata\ndata:a\ndata:  b\n\n"
    )
    assert parse_event(raw, first=True) == SseEvent("delta", "\na\n b", "7", 30)
    assert parse_event(b"id: a\0b\ndata: x\n\n").id is None
    assert parse_event(b": only a comment\n\n").data is None


# --- the usage reader over the same streams ---

USAGE = {"prompt_tokens": 17, "completion_tokens": 5, "total_tokens": 22}


def chat_event(content: str | None) -> list[str]:
    obj: dict[str, object] = {"object": "chat.completion.chunk", "model": "m1"}
    if content is None:
        obj.update(choices=[], usage=USAGE)
    else:
        obj["choices"] = [{"index": 0, "delta": {"content": content}}]
    return ["data: " + json.dumps(obj, separators=(",", ":"))]


@settings(max_examples=300)
@given(
    st.lists(text, max_size=6),
    st.lists(st.sampled_from(ENDINGS), min_size=1, max_size=4),
    st.lists(st.integers(0, 10**6), max_size=12),
    st.integers(1, 300),
    st.booleans(),
)
def test_stripping_removes_exactly_the_usage_event_and_reads_its_usage(
    contents: list[str], endings: list[bytes], points: list[int], max_write: int, strip: bool
) -> None:
    lines = [chat_event(c) for c in contents] + [chat_event(None), ["data: [DONE]"]]
    raws = serialise(lines, endings)
    stream = b"".join(raws)
    expected = b"".join(raws[:-2] + raws[-1:]) if strip else stream
    reader = SseUsage(strip=strip, max_write=max_write)
    writes = [w for chunk in cut(stream, points) for w in reader.feed(chunk)]
    writes += reader.finish()
    assert b"".join(writes) == expected
    if strip:
        assert all(0 < len(w) <= max_write for w in writes)
    usage = reader.result()
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (17, 5, 22)
    assert (usage.model, usage.found, usage.source) == ("m1", True, "")
    assert reader.deltas == len(contents)


def test_usage_of_a_response_completed_event_larger_than_the_kept_tail() -> None:
    completed = {
        "type": "response.completed",
        "response": {
            "model": "m2",
            "output": [{"type": "message", "content": "z" * 300_000}],
            "usage": {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7},
        },
    }
    stream = b"event: response.completed\ndata: " + json.dumps(completed).encode() + b"\n\n"
    reader = SseUsage(strip=False, max_write=32768)
    for i in range(0, len(stream), 32768):
        reader.feed(stream[i : i + 32768])
    usage = reader.result()
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (3, 4, 7)
