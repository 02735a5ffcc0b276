"""Token usage from JSON bodies and the final SSE usage chunk; include_usage injection."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import orjson

_USAGE_MARKERS = (b'"usage":{', b'"usage": {')
_MAX_HELD = 1 << 20


@dataclass(slots=True)
class Usage:
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def absorb(self, obj: Any) -> bool:
        """Take model and usage from a decoded response object (chat, completions, embeddings,
        responses API, or its ``response.completed`` event). True if usage was found."""
        if not isinstance(obj, dict):
            return False
        if isinstance(obj.get("response"), dict):  # responses API stream events
            obj = obj["response"]
        model = obj.get("model")
        if isinstance(model, str) and model and not self.model:
            self.model = model[:200]
        usage = obj.get("usage")
        if not isinstance(usage, dict):
            return False
        prompt = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
        completion = _int(usage.get("completion_tokens", usage.get("output_tokens")))
        total = _int(usage.get("total_tokens")) or prompt + completion
        self.prompt_tokens, self.completion_tokens, self.total_tokens = prompt, completion, total
        return True


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def usage_from_json(body: bytes) -> Usage:
    usage = Usage()
    if body:
        with contextlib.suppress(orjson.JSONDecodeError):
            usage.absorb(orjson.loads(body))
    return usage


def inject_include_usage(body: bytes) -> bytes | None:
    """For a streaming chat/completions request body that does not ask for usage, the same body
    asking for it; ``None`` when nothing needs changing (or the body is not a JSON object — the
    upstream owns validation, so such a body passes through untouched)."""
    if b'"stream"' not in body:
        return None
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or obj.get("stream") is not True:
        return None
    options = obj.get("stream_options")
    if options is None:
        obj["stream_options"] = {"include_usage": True}
    elif isinstance(options, dict) and "include_usage" not in options:
        options["include_usage"] = True
    else:
        return None
    return orjson.dumps(obj)


class SseUsage:
    """Watches an SSE stream go by, keeping the model and the last usage it reports.

    With ``strip`` (we added include_usage, the client did not ask for it) it also removes the
    usage-only chunk, so the client sees the stream it asked for. Stripping works on whole
    events, so partial events are held back until their blank line arrives; without ``strip``
    bytes pass through exactly as received."""

    def __init__(self, *, strip: bool) -> None:
        self.usage = Usage()
        self.strip = strip
        self._pending = b""
        self._model_seen = False

    def feed(self, chunk: bytes) -> bytes:
        """Look at ``chunk``; return the bytes to send to the client now."""
        data = self._pending + chunk
        if not self.strip:
            cut = data.rfind(b"\n")
            if cut < 0:
                self._pending = data if len(data) < _MAX_HELD else b""
                return chunk
            lines, self._pending = data[:cut], data[cut + 1 :]
            if not self._model_seen or any(m in lines for m in _USAGE_MARKERS):
                self._scan(lines)
            return chunk
        cut = data.rfind(b"\n\n")
        if cut < 0:
            if len(data) >= _MAX_HELD:  # not SSE as we know it: stop holding bytes back
                self.strip, self._pending = False, b""
                return data
            self._pending = data
            return b""
        complete, self._pending = data[: cut + 2], data[cut + 2 :]
        out = []
        for event in complete.split(b"\n\n"):
            if not event or self._is_usage_only(event):
                continue
            if not self._model_seen:
                self._scan(event)
            out.append(event + b"\n\n")
        return b"".join(out)

    def finish(self) -> bytes:
        """The stream ended: anything still held back (only in strip mode)."""
        rest, self._pending = self._pending, b""
        if not rest:
            return b""
        if not self.strip:
            self._scan(rest)
            return b""
        return b"" if self._is_usage_only(rest) else rest

    def _is_usage_only(self, event: bytes) -> bool:
        if not any(m in event for m in _USAGE_MARKERS):
            return False
        for obj in _data_objects(event):
            self.usage.absorb(obj)
            if isinstance(obj, dict) and obj.get("choices") == []:
                return True
        return False

    def _scan(self, data: bytes) -> None:
        for obj in _data_objects(data):
            if isinstance(obj, dict) and isinstance(obj.get("model"), str):
                self._model_seen = True
            self.usage.absorb(obj)


def _data_objects(data: bytes) -> list[Any]:
    objs = []
    for line in data.split(b"\n"):
        if line.startswith(b"data:"):
            payload = line[5:].strip()
            if payload.startswith(b"{"):
                try:
                    objs.append(orjson.loads(payload))
                except orjson.JSONDecodeError:
                    continue
    return objs
