"""The wire module against h11 (a parser we did not write): for any header values, body shape
and framing, what we write parses as exactly one request carrying exactly the body."""

from __future__ import annotations

import ast
import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.upstream import wire
from shared.errors import InvalidHeader, UpstreamError


class Buffer:
    """Collects what a connection would have put on the socket."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        await asyncio.sleep(0)


async def stream(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def parse_all(data: bytes) -> tuple[list[h11.Request], list[bytes], bytes]:
    """Every request h11 finds in ``data``, their bodies, and bytes left over."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    conn.receive_data(b"")  # the client closed: nothing more is coming
    requests: list[h11.Request] = []
    bodies: list[bytes] = []
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Request):
            requests.append(event)
            bodies.append(b"")
        elif isinstance(event, h11.Data):
            bodies[-1] += event.data
        elif isinstance(event, h11.EndOfMessage):
            conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
            conn.send(h11.EndOfMessage())
            if conn.their_state is h11.MUST_CLOSE:
                break
            conn.start_next_cycle()
        else:
            break
    return requests, bodies, conn.trailing_data[0]


# Header values: any latin-1 text; some hold a forbidden CR, LF or NUL.
values = st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=255), max_size=40)
safe_values = values.map(
    lambda v: "".join(c for c in v if c == "\t" or (c >= " " and c != "\x7f")).strip(" \t")
)
chunks = st.lists(st.binary(min_size=0, max_size=300), max_size=6)
shapes = st.sampled_from(["none", "bytes", "stream-with-length", "stream-chunked"])


async def written(
    headers: dict[str, str], shape: str, parts: list[bytes], close: bool
) -> tuple[bytes, bytes]:
    """What the wire module writes for this request, and the body it should carry."""
    payload = b"".join(parts)
    body: wire.Body | None
    length: int | None = None
    if shape == "none":
        body, payload = None, b""
    elif shape == "bytes":
        body = payload
    else:
        body = stream(parts)
        length = len(payload) if shape == "stream-with-length" else None
    frame = wire.framing(body, length)
    out = Buffer()
    out.write(wire.head("POST", b"/v1/x?q=1", b"up:8080", headers, frame, close=close))
    if isinstance(body, bytes):
        out.write(body)
    elif body is not None:
        await wire.write_body(out, body, frame)
    return bytes(out.data), payload


@settings(max_examples=300, deadline=None)
@given(
    ua=safe_values,
    extra=st.dictionaries(
        st.sampled_from(["accept", "openai-beta", "x-a", "idempotency-key"]), safe_values
    ),
    shape=shapes,
    parts=chunks,
    close=st.booleans(),
)
def test_h11_sees_one_request_with_exactly_the_body(
    ua: str, extra: dict[str, str], shape: str, parts: list[bytes], close: bool
) -> None:
    headers = {"user-agent": ua + " transfer-encoding: chunked", **extra}
    data, payload = asyncio.run(written(headers, shape, parts, close))
    requests, bodies, rest = parse_all(data + data)  # twice on one connection
    expected = 1 if close else 2
    assert len(requests) == expected
    assert bodies == [payload] * expected
    assert rest == (data if close else b"")  # after `connection: close`, nothing is read
    names = [name for name, _ in requests[0].headers]
    framing = {b"content-length", b"transfer-encoding"} & set(names)
    assert len(framing) == (0 if shape == "none" else 1)
    assert dict(requests[0].headers)[b"user-agent"] == (ua + " transfer-encoding: chunked").strip(
        " \t"
    ).encode("latin-1")


@settings(max_examples=200, deadline=None)
@given(
    value=st.tuples(
        values, st.sampled_from(["\r", "\n", "\x00", "\x0b", "\x1f", "\x7f"]), values
    ).map("".join)
)
def test_a_value_with_a_control_character_is_refused(value: str) -> None:
    with pytest.raises(InvalidHeader):
        wire.head("GET", b"/", b"h", {"user-agent": value}, wire.NO_BODY)


@pytest.mark.parametrize(
    "name",
    ["bad name", "bad:name", "", "x\r\ny", "transfer-encoding", "Content-Length", "host"],
)
def test_a_name_that_is_not_a_token_or_is_ours_is_refused(name: str) -> None:
    with pytest.raises(InvalidHeader):
        wire.head("GET", b"/", b"h", {name: "v"}, wire.NO_BODY)


@pytest.mark.parametrize(("declared", "parts"), [(5, [b"abc"]), (2, [b"abc"]), (3, [b"ab", b"cd"])])
async def test_a_body_that_is_not_its_declared_length_is_an_upstream_error(
    declared: int, parts: list[bytes]
) -> None:
    out = Buffer()
    with pytest.raises(UpstreamError):
        await wire.write_body(out, stream(parts), wire.framing(stream(parts), declared))
    assert len(out.data) <= declared  # never a byte past the length


def test_only_the_pool_imports_the_connection_and_the_connection_knows_no_pool() -> None:
    root = Path(__file__).resolve().parents[1]
    importers = set()
    for path in (root / "proxy").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "proxy.upstream.connection":
                    importers.add(path.relative_to(root).as_posix())
                if path.name == "connection.py" and node.module.startswith("proxy.upstream"):
                    importers.add("connection imports " + node.module)
    assert importers == {"proxy/upstream/pool.py"}
