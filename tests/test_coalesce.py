"""The coalescing transport against a real socket on loopback: whatever mix of writes, passes of
the event loop, large writes and closing, the peer reads exactly the bytes written, in order,
and then the end of the stream; an abort drops what was held. Both under asyncio's own loop and
under uvloop's, whose transports the proxy's workers use."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest
import uvloop
from hypothesis import given
from hypothesis import strategies as st

from proxy.coalesce import FLUSH_AT, CoalescingTransport

# a step: bytes to write (sizes around the flush threshold included), or None: let the loop run
steps = st.lists(
    st.one_of(
        st.none(),
        st.integers(min_value=0, max_value=300).map(lambda n: b"a" * n),
        st.sampled_from([FLUSH_AT - 1, FLUSH_AT, 3 * FLUSH_AT]).map(lambda n: b"b" * n),
        st.binary(min_size=1, max_size=64),
    ),
    max_size=30,
)


async def _exchange(plan: list[bytes | None], abort: bool) -> tuple[bytes, bytes]:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
    wrapped = CoalescingTransport(transport, loop)  # type: ignore[arg-type]
    written = bytearray()
    for step in plan:
        if step is None:
            await asyncio.sleep(0)
        else:
            wrapped.write(step)
            written += step
    if abort:
        wrapped.abort()
    else:
        wrapped.close()
    received = bytearray()
    while True:
        try:
            data = await loop.sock_recv(theirs, 1 << 20)
        except ConnectionError:
            break
        if not data:
            break
        received += data
    theirs.close()
    return bytes(written), bytes(received)


LOOPS = pytest.mark.parametrize(
    "new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)


def _run(
    new_loop: Callable[[], asyncio.AbstractEventLoop], plan: list[bytes | None], abort: bool
) -> tuple[bytes, bytes]:
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(_exchange(plan, abort))


@LOOPS
@given(plan=steps)
def test_the_peer_reads_every_byte_in_order_then_the_end(
    new_loop: Callable[[], asyncio.AbstractEventLoop], plan: list[bytes | None]
) -> None:
    written, received = _run(new_loop, plan, abort=False)
    assert received == written


@LOOPS
@given(plan=steps)
def test_an_abort_sends_at_most_what_was_already_written(
    new_loop: Callable[[], asyncio.AbstractEventLoop], plan: list[bytes | None]
) -> None:
    written, received = _run(new_loop, plan, abort=True)
    assert written.startswith(received)
