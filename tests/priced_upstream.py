"""A fast fake OpenAI upstream for load tests: bench/fake_upstream's server, answering each chat
completion for the model the request names, with full usage (cached and reasoning tokens).

A stream whose request says ``"user": "hang-up"`` sends its first frame, then waits for the
proxy to drop the connection (its client left) before sending the rest: a disconnect mid-stream
that cannot be outrun. Run: python -m tests.priced_upstream --port 0 (prints its URL).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import orjson

from bench.fake_upstream import Config, Responses, Upstream, _chunked, _response, _sse, run

HANG_UP = "hang-up"
#: How long a hang-up stream waits for the proxy to let go before finishing anyway.
HOLD_SECONDS = 30.0
_DONE = _chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n"
_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)


def usage_for(request_bytes: int) -> dict[str, Any]:
    """Usage that varies with the request, every kind of token non-zero."""
    prompt = request_bytes // 4 + 5
    completion = 8 + request_bytes % 13
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": prompt // 3},
        "completion_tokens_details": {"reasoning_tokens": completion // 4},
    }


def _chunk(model: str, delta: dict[str, str] | None, usage: Any = None) -> bytes:
    obj: dict[str, Any] = {"id": "c1", "object": "chat.completion.chunk", "model": model}
    obj["choices"] = [] if delta is None else [{"index": 0, "delta": delta}]
    if usage is not None:
        obj["usage"] = usage
    return _sse(obj)


class PricedUpstream(Upstream):
    __slots__ = ("gone",)

    def __init__(self, responses: Responses) -> None:
        super().__init__(responses)
        self.gone = asyncio.Event()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.gone.set()

    def handle(self, method: bytes, url: bytes, body: bytes, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None:
            return
        if method != b"POST" or url.partition(b"?")[0] != b"/v1/chat/completions":
            super().handle(method, url, body, keep_alive)
            return
        try:
            request = orjson.loads(body)
            model = str(request["model"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            transport.write(self.responses.bad_json)
            return
        usage = usage_for(len(body))
        if request.get("stream") is True:
            self.busy = True
            hang_up = request.get("user") == HANG_UP
            self.task = asyncio.ensure_future(self.priced_stream(model, usage, hang_up, keep_alive))
            return
        answer = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "priced answer"},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }
        transport.write(_response(b"200 OK", orjson.dumps(answer)))
        if not keep_alive:
            transport.close()

    async def priced_stream(
        self, model: str, usage: dict[str, Any], hang_up: bool, keep_alive: bool
    ) -> None:
        first = _chunk(model, {"role": "assistant", "content": "one "})
        rest = _chunk(model, {"content": "two "}) + _chunk(model, {"content": "three"})
        rest += _chunk(model, None, usage) + _DONE
        if hang_up:
            self._write(_STREAM_HEAD + first)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.gone.wait(), HOLD_SECONDS)
            self._write(rest)
        else:
            self._write(_STREAM_HEAD + first + rest)
        self.finish_stream(keep_alive)


def priced_protocols(config: Config) -> Callable[[], asyncio.Protocol]:
    responses = Responses(config)
    return lambda: PricedUpstream(responses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    run(args.host, args.port, args.workers, Config(), priced_protocols)


if __name__ == "__main__":
    main()
