"""One socket write per response where there were two or three.

uvicorn writes a response's head when the app sends ``http.response.start`` and each body
message when it is sent: a small JSON answer costs the worker two ``send`` system calls and the
client two TCP segments, though the relay has the whole answer in hand within the same pass of
the event loop. ``CoalescingTransport`` sits between uvicorn's protocol and the socket's
transport: writes made in one pass of the loop are joined and written once, by a callback that
runs before the loop next waits for I/O. Nothing is ever held past that pass, so a stream's
events leave as soon as they did before.

Order is kept with everything else that touches the socket: closing, aborting or handing the
transport to another protocol first writes (or, for ``abort``, drops) what is held. A pass that
gathers more than ``FLUSH_AT`` bytes writes at once, so the transport's own flow control (its
high-water mark, uvicorn's pause and resume) still sees every byte as soon as before, at most
one write late.
"""

from __future__ import annotations

import asyncio
from typing import Any

FLUSH_AT = 64 * 1024


class CoalescingTransport:
    """Wraps a stream transport; anything not written here is the wrapped transport's own."""

    __slots__ = ("_held", "_loop", "_pending", "_size", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._size = 0
        self._pending = False  # a flush is scheduled for the end of this pass

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._held.append(bytes(data))
        self._size += len(data)
        if self._size >= FLUSH_AT:
            self.flush()
        elif not self._pending:
            self._pending = True
            self._loop.call_soon(self._flush_soon)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def _flush_soon(self) -> None:
        self._pending = False
        self.flush()

    def flush(self) -> None:
        """Write what is held, as one write."""
        held = self._held
        if not held:
            return
        data = held[0] if len(held) == 1 else b"".join(held)
        held.clear()
        self._size = 0
        self.transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._size + self.transport.get_write_buffer_size()

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def abort(self) -> None:
        self._held.clear()
        self._size = 0
        self.transport.abort()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.flush()
        self.transport.set_protocol(protocol)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:  # anything else a transport offers
        return getattr(self.transport, name)
