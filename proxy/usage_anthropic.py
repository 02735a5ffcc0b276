"""Usage of a streamed Anthropic Messages answer: ``message_start`` carries the model and the
input counts, each ``message_delta`` the counts so far; the bytes pass through untouched."""

from __future__ import annotations

import orjson

from proxy.sse import SseSplitter, parse_event
from proxy.usage import Usage

_START, _DELTA = b'"message_start"', b'"message_delta"'
_CONTENT_DELTA = b'"content_block_delta"'
_KEYS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


class AnthropicSseUsage:
    """The same face as ``SseUsage`` for the relay: ``feed`` returns what to send (the chunk
    as it came), ``result`` the usage, ``deltas`` the content events seen (the completion
    estimate when no usage ever comes)."""

    __slots__ = ("_counts", "_first", "_splitter", "deltas", "usage")

    def __init__(self) -> None:
        self.usage = Usage()
        self.deltas = 0
        self._splitter = SseSplitter()
        self._first = True
        self._counts: dict[str, int] = {}

    def feed(self, chunk: bytes) -> list[bytes]:
        for piece in self._splitter.feed(chunk):
            raw = piece.raw
            if piece.start and piece.end:
                if _CONTENT_DELTA in raw:
                    self.deltas += 1
                elif _START in raw or _DELTA in raw:
                    self._absorb(raw)
            self._first = False
        return [chunk]

    def finish(self) -> list[bytes]:
        piece = self._splitter.finish()
        if piece is not None and piece.start and (_START in piece.raw or _DELTA in piece.raw):
            self._absorb(piece.raw)
        return []

    def result(self) -> Usage:
        return self.usage

    def _absorb(self, raw: bytes) -> None:
        data = parse_event(raw, first=self._first).data
        if not data or data[0] != "{":
            return
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(obj, dict):
            return
        message = obj.get("message")
        if obj.get("type") == "message_start" and isinstance(message, dict):
            model = message.get("model")
            if isinstance(model, str) and model:
                self.usage.model = model[:200]
            usage = message.get("usage")
        else:
            usage = obj.get("usage")
        if not isinstance(usage, dict):
            return
        counts = self._counts
        for key in _KEYS:  # a later event's figure replaces an earlier one's
            value = usage.get(key)
            if type(value) is int:
                counts[key] = value
        # the whole report so far, read as one usage object (clamping and sums in one place)
        merged = Usage(model=self.usage.model)
        merged.absorb({"usage": counts})
        self.usage = merged
