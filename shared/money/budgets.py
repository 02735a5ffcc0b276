"""Budget windows and the reservation estimate: pure time arithmetic and upper bounds."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson

from shared.money.cost import cost_picos
from shared.money.prices import PriceRow

#: window name -> (length, the bucket spend is counted in when rolling)
WINDOWS: dict[str, tuple[timedelta, timedelta]] = {
    "1m": (timedelta(minutes=1), timedelta(seconds=1)),  # tokens per minute
    "5h": (timedelta(hours=5), timedelta(minutes=5)),
    "1d": (timedelta(days=1), timedelta(minutes=15)),
    "1mo": (timedelta(days=30), timedelta(hours=6)),
}
BUDGET_WINDOWS = ("5h", "1d", "1mo")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Window:
    """A rolling window (spend in the last ``length``, counted in buckets: a bucket counts
    whole while any of it is in the window, so the sum never under-counts) or a calendar one
    (the current UTC day or month; ``5h`` calendar is the current 5-hour block from midnight)."""

    name: str
    calendar: bool = False

    @property
    def key(self) -> str:
        return self.name + ("@calendar" if self.calendar else "")

    @classmethod
    def from_key(cls, key: str) -> Window:
        """The window whose ``key`` this is."""
        name, _, kind = key.partition("@")
        return cls(name, kind == "calendar")

    def bucket(self, now: datetime) -> datetime:
        """The start of the bucket spend at ``now`` is counted in."""
        if self.calendar:
            return self.start(now)
        step = WINDOWS[self.name][1]
        return _EPOCH + step * ((now - _EPOCH) // step)

    def start(self, now: datetime) -> datetime:
        """The earliest bucket start that counts at ``now``."""
        now = now.astimezone(UTC)
        if self.calendar:
            if self.name == "1mo":
                return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            day = now.replace(hour=0, minute=0, second=0, microsecond=0)
            if self.name == "1d":
                return day
            length = WINDOWS[self.name][0]
            return day + length * ((now - day) // length)
        length, step = WINDOWS[self.name]
        return _EPOCH + step * ((now - length - _EPOCH) // step)

    def reset(self, now: datetime) -> datetime:
        """When the spend counted now stops counting entirely (for headers)."""
        if self.calendar:
            start = self.start(now)
            if self.name == "1mo":
                month = start.month % 12 + 1
                return start.replace(year=start.year + (month == 1), month=month)
            return start + WINDOWS[self.name][0]
        return self.bucket(now) + WINDOWS[self.name][0] + WINDOWS[self.name][1]


def completion_cap(body: bytes | None, default: int) -> int:
    """The most completion tokens a request asks for: ``max_completion_tokens``,
    ``max_tokens`` or ``max_output_tokens``, else ``default``."""
    if body:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return default
        if isinstance(obj, dict):
            for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
                value = obj.get(key)
                if type(value) is int and value > 0:
                    return value
    return default


def estimate_tokens(body: bytes | None, default_completion: int) -> tuple[int, int]:
    """An upper bound of (prompt, completion) tokens: every token of a BPE tokenizer covers at
    least one byte, and the JSON around the text (keys, quotes) outweighs the few tokens a
    message adds, so the body's length bounds the prompt; the completion is capped by the
    request's own limit."""
    prompt = len(body) if body else 0
    return prompt, completion_cap(body, default_completion)


def estimate_cost(row: PriceRow | None, prompt: int, completion: int) -> int | None:
    """The most the request can cost at ``row`` (reasoning at the higher of its rates)."""
    if row is None:
        return None
    top = max(row.output, row.reasoning or 0)
    capped = PriceRow(row.model, max(row.input, row.cached_input or 0), top, row.effective_from)
    return cost_picos(capped, prompt=prompt, completion=completion)
