"""Log set-up: JSON or text lines, and a filter that masks anything shaped like a secret."""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

import orjson

from shared.tokens import TOKEN_PREFIX

# Proxy tokens, bearer credentials and common upstream key shapes.
_SECRET_PATTERNS = re.compile(
    r"(" + re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_-]{4})[A-Za-z0-9_-]+"
    r"|(Bearer\s+)[^\s\"']+"
    r"|\b(sk-(?:proj-)?)[A-Za-z0-9_-]{8,}",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    def repl(match: re.Match[str]) -> str:
        keep = match.group(1) or match.group(2) or match.group(3) or ""
        return keep + "…"

    return _SECRET_PATTERNS.sub(repl, text)


class RedactingFilter(logging.Filter):
    """Last line of defence: code never logs secrets, and this masks any that slip through."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


# uvicorn's ``color_message`` repeats the message with terminal colour codes
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(out, default=str).decode()


def style(handler: logging.Handler, fmt: str = "json") -> logging.Handler:
    """Give ``handler`` our line format (LOG_FORMAT) and the redacting filter. Every handler
    writing a process's output goes through here, gunicorn's own included, so one server's
    output is one format."""
    if not any(isinstance(f, RedactingFilter) for f in handler.filters):
        handler.addFilter(RedactingFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s")
        )
    return handler


def setup_logging(level: str = "info", fmt: str = "json") -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_llm_proxy", False):
            root.removeHandler(handler)
    handler = style(logging.StreamHandler(sys.stderr), fmt)
    handler._llm_proxy = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
