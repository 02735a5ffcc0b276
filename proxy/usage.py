"""Token usage of one answer: read from JSON bodies (whole, or head and tail when large), clamped
when absurd, estimated when the upstream never said; and include_usage forced on streams."""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

#: Endpoints whose answers carry token usage; their request bodies are read whole (see
#: docs/decisions.md, "Usage in every case").
USAGE_ENDPOINTS = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"}
)
#: Streaming endpoints that take ``stream_options.include_usage``.
INCLUDE_USAGE_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions"})


def bills_tokens(method: str, endpoint: str, rest: str) -> bool:
    """A request that creates a completion (not a sub-resource such as ``responses/{id}``)."""
    return method == "POST" and endpoint in USAGE_ENDPOINTS and endpoint[3:] == rest


USAGE_MARKERS = (b'"usage":{', b'"usage": {')
#: No request comes near a billion tokens: a larger figure is a bug or an attack. Clamped to
#: this, one event can never overflow a BIGINT aggregate (9e18 / 1e9 requests to go).
MAX_TOKENS = 10**9
CLAMPED, ESTIMATED = "clamped", "estimated"
CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text and code

_WHOLE_JSON = 1 << 20  # answers up to this are parsed whole
_HEAD = 16 * 1024  # past it, the first bytes (the model of chat answers) ...
_TAIL = 64 * 1024  # ... and the last (usage is the last field of OpenAI bodies; embeddings' model)
_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')
_PROMPT_KEYS = ("messages", "prompt", "input", "instructions", "system")


@dataclass(slots=True)
class Usage:
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    found: bool = False  # the upstream reported usage
    source: str = ""  # '' as reported, 'clamped' (absurd figures bounded), 'estimated'
    #: Anthropic's prompt-cache writes and reads; prompt_tokens includes both (Anthropic's own
    #: input_tokens does not), so prompt_tokens means every prompt token whatever the provider
    cache_creation_tokens: int = 0
    cache_read_tokens: int = 0
    #: parts of the prompt and completion counts priced apart: input read from the
    #: provider's prompt cache, and hidden reasoning (both included in the counts above)
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    def absorb(self, obj: Any) -> bool:
        """Take model and usage from a decoded response object (chat, completions, embeddings,
        responses API, or its ``response.completed`` event). True if usage was found."""
        if not isinstance(obj, dict):
            return False
        if isinstance(obj.get("response"), dict):  # responses API stream events
            obj = obj["response"]
        elif isinstance(obj.get("message"), dict):  # Anthropic's message_start event
            obj = obj["message"]
        model = obj.get("model")
        if isinstance(model, str) and model and not self.model:
            self.model = model[:200]
        usage = obj.get("usage")
        if not isinstance(usage, dict):
            return False
        clamped: list[bool] = []
        prompt = _count(usage.get("prompt_tokens", usage.get("input_tokens")), clamped)
        completion = _count(usage.get("completion_tokens", usage.get("output_tokens")), clamped)
        written = _count(usage.get("cache_creation_input_tokens"), clamped)
        read = _count(usage.get("cache_read_input_tokens"), clamped)
        prompt = min(prompt + written + read, MAX_TOKENS)
        total = _count(usage.get("total_tokens"), clamped) or prompt + completion
        self.prompt_tokens, self.completion_tokens, self.total_tokens = prompt, completion, total
        self.cache_creation_tokens, self.cache_read_tokens = written, read
        # chat: prompt_/completion_tokens_details; Responses API: input_/output_tokens_details.
        # A part larger than its whole is absurd: bounded by it, and noted.
        cached = _count(_detail(usage, "cached_tokens", "prompt", "input"), clamped)
        reasoning = _count(_detail(usage, "reasoning_tokens", "completion", "output"), clamped)
        if cached > prompt or reasoning > completion:
            clamped.append(True)
        self.cached_tokens, self.reasoning_tokens = min(cached, prompt), min(reasoning, completion)
        self.found = True
        self.source = CLAMPED if clamped else ""
        return True


def _detail(usage: dict[str, Any], key: str, *prefixes: str) -> Any:
    """``key`` of the first ``<prefix>_tokens_details`` object present."""
    for prefix in prefixes:
        details = usage.get(f"{prefix}_tokens_details")
        if isinstance(details, dict):
            return details.get(key)
    return None


def _count(value: Any, clamped: list[bool]) -> int:
    """A token count as reported; absent is 0, anything absurd is bounded and noted."""
    if value is None:
        return 0
    if type(value) is float and value.is_integer():
        value = int(value)
    if type(value) is not int:
        clamped.append(True)
        return 0
    if value < 0 or value > MAX_TOKENS:
        clamped.append(True)
        return 0 if value < 0 else MAX_TOKENS
    return value


def usage_from_json(body: bytes) -> Usage:
    usage = Usage()
    if body:
        with contextlib.suppress(orjson.JSONDecodeError):
            usage.absorb(orjson.loads(body))
    return usage


def usage_from_tail(tail: bytes, usage: Usage) -> None:
    """Read the last ``"usage": {...}`` object in ``tail`` (the end of a body too large to
    parse whole) into ``usage``."""
    at = max(tail.rfind(marker) for marker in USAGE_MARKERS)
    if at < 0:
        return
    start = tail.index(b"{", at)
    depth, in_string, escaped = 0, False, False
    for i in range(start, min(len(tail), start + 4096)):  # a usage object is small
        byte = tail[i]
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte == 0x7B:
            depth += 1
        elif byte == 0x7D:
            depth -= 1
            if depth == 0:
                try:
                    usage.absorb({"usage": orjson.loads(tail[start : i + 1])})
                except orjson.JSONDecodeError:
                    return
                return


class JsonTap:
    """A bounded copy of a JSON answer as it goes by: whole up to 1 MiB, past that its head
    and its tail, which is where the model and the usage of OpenAI bodies are."""

    __slots__ = ("_head", "_tail")

    def __init__(self) -> None:
        # the first chunk is kept as it came (bytes: no copy; most answers are one chunk)
        self._head: bytes | bytearray = b""
        self._tail: bytearray | None = None

    def feed(self, chunk: bytes) -> None:
        tail = self._tail
        if tail is None:
            head = self._head
            if not head:
                self._head = chunk
                head = chunk
            elif isinstance(head, bytes):
                self._head = head = bytearray(head) + chunk
            else:
                head += chunk
            if len(head) > _WHOLE_JSON:
                self._tail = bytearray(head[-_TAIL:])
                self._head = bytes(head[:_HEAD])
        else:
            tail += chunk
            if len(tail) > 4 * _TAIL:
                del tail[:-_TAIL]

    def whole(self) -> bytes | None:
        """The answer, if it was small enough to keep whole."""
        return bytes(self._head) if self._tail is None else None

    def usage(self) -> Usage:
        if self._tail is None:
            head = self._head
            return usage_from_json(head if isinstance(head, bytes) else bytes(head))
        usage = Usage()
        tail = bytes(self._tail)
        usage_from_tail(tail, usage)
        match = _MODEL.search(self._head) or _last(_MODEL.finditer(tail))
        if match is not None:
            usage.model = match.group(1).decode("utf-8", "replace")
        return usage


def _last(matches: Any) -> Any:
    found = None
    for found in matches:  # noqa: B007 - the last one is wanted
        pass
    return found


def inject_include_usage(body: bytes) -> bytes | None:
    """For a streaming request body that does not ask for usage (or asks not to have it), the
    same body asking for it; ``None`` when nothing needs changing, or when the body is not a JSON
    object we can write back (the upstream owns validation: such a body passes untouched)."""
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
    elif isinstance(options, dict) and options.get("include_usage") is not True:
        options["include_usage"] = True
    else:
        return None
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:  # nested deeper than orjson writes (255): leave it alone
        return None


def estimate(usage: Usage, request: bytes | None, completion_tokens: int) -> Usage:
    """The usage of an answer whose upstream never reported it (cut short, or a server that
    does not count): prompt from the request's text, completion as given; flagged estimated."""
    prompt = estimate_prompt_tokens(request) if request else 0
    completion = min(completion_tokens, MAX_TOKENS)
    return Usage(usage.model, prompt, completion, prompt + completion, False, ESTIMATED)


def estimate_prompt_tokens(body: bytes) -> int:
    """About one token per four characters of the prompt's text (messages, prompt, input)."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return math.ceil(len(body) / CHARS_PER_TOKEN)
    chars = 0
    if isinstance(obj, dict):
        for key in _PROMPT_KEYS:
            if key in obj:
                chars += _text_chars(obj[key], 0)
    return min(math.ceil(chars / CHARS_PER_TOKEN), MAX_TOKENS)


def estimate_completion_tokens(body: bytes) -> int:
    """For a whole JSON answer without usage: its choices' text, four characters a token."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 0
    # OpenAI's choices, or the content blocks of an Anthropic message
    choices = (obj.get("choices") or obj.get("content")) if isinstance(obj, dict) else None
    return math.ceil(_text_chars(choices, 0) / CHARS_PER_TOKEN) if choices else 0


def _text_chars(value: Any, depth: int) -> int:
    if isinstance(value, str):
        return len(value)
    if depth > 32:  # deeper is not text anyone prompts with
        return 0
    if isinstance(value, list):
        return sum(_text_chars(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return sum(_text_chars(v, depth + 1) for v in value.values())
    return 0
