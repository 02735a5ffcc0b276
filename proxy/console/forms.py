"""The console's form bodies: urlencoded, bounded, parsed once per request."""

from __future__ import annotations

import urllib.parse

from starlette.requests import Request

from shared.errors import BodyTooLarge

MAX_FORM_BYTES = 64 * 1024  # the largest console form is a few short fields
_KEY = "llm_proxy.console.form"


async def form_of(request: Request) -> dict[str, str]:
    """The submitted fields (the first value of each); read from the body once, then reused."""
    known = request.scope.get(_KEY)
    if known is not None:
        return dict(known)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            raise BodyTooLarge(f"form over {MAX_FORM_BYTES} bytes")
        chunks.append(chunk)
    fields: dict[str, str] = {}
    text = b"".join(chunks).decode("utf-8", errors="replace")
    for name, value in urllib.parse.parse_qsl(text, keep_blank_values=True):
        fields.setdefault(name, value)
    request.scope[_KEY] = fields
    return dict(fields)
