"""Reading the request body: whole when small, streamed upstream when large, always bounded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from shared.errors import BodyTooLarge, UserError

# Bodies up to this size are read whole: needed to add include_usage and to hash for the cache,
# and LLM request bodies are small. Larger ones (file and audio uploads) stream through.
BUFFERED_BODY_BYTES = 1 << 20


class ClientGone(Exception):
    """The client disconnected; nothing more can be sent or received."""


async def read_body(
    receive: Any, method: str, content_length: bytes | None, limit: int, *, whole: bool = False
) -> bytes | StreamedBody | None:
    """The request body: ``bytes`` when small (or ``whole``: always, up to ``limit``), an async
    iterator when large, ``None`` for a bodiless GET/HEAD/DELETE. Over ``limit`` → 413, before
    reading past it."""
    declared: int | None = None
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise UserError("Malformed Content-Length.") from None
        if declared > limit:
            raise BodyTooLarge(f"Request body exceeds {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"Request body exceeds {limit} bytes.")
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            if not chunks and method in ("GET", "HEAD", "DELETE") and not declared:
                return None
            return b"".join(chunks)
        if size > BUFFERED_BODY_BYTES and not whole:
            return StreamedBody(receive, chunks, size, limit, declared)


class StreamedBody:
    """The rest of a large body, read as the upstream client sends it. A failure (client gone,
    over the limit) is kept in ``error``: the upstream client only reports that sending failed."""

    def __init__(
        self, receive: Any, head: list[bytes], size: int, limit: int, length: int | None
    ) -> None:
        self.receive = receive
        self.length = length  # the client's Content-Length, passed on; None: sent chunked
        self.head = head
        self.size = size
        self.limit = limit
        self.error: Exception | None = None
        self.finished = asyncio.Event()  # read to its end: a disconnect watch may begin

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.head:
            yield chunk
        self.head = []
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.error = ClientGone()
                raise self.error
            chunk = message.get("body", b"")
            self.size += len(chunk)
            if self.size > self.limit:
                self.error = BodyTooLarge(f"Request body exceeds {self.limit} bytes.")
                raise self.error
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                self.finished.set()
                return
