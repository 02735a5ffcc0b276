"""The price table: rows shipped in the package and the operator's, looked up by model and time."""

from __future__ import annotations

import json
import re
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from importlib import resources
from typing import Any

from shared.money.amounts import AmountError, rate_from_usd

SHIPPED, OPERATOR = "shipped", "operator"
#: Rate fields of a row, in dollars per million tokens in files and on the wire.
RATES = ("input", "cached_input", "output", "reasoning", "cache_write")
#: A dated snapshot (``gpt-4o-2024-08-06``, ``claude-3-5-haiku-20241022``) is priced as its
#: model when it has no row of its own.
_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8})$")


@dataclass(frozen=True, slots=True)
class PriceRow:
    """One model's rates from ``effective_from`` on, in micro-dollars per million tokens.
    ``cached_input`` None: cached input costs ``input``; ``reasoning`` None: ``output``;
    ``cache_write`` None: ``input``. ``project_id`` None is a price for every project."""

    model: str
    input: int
    output: int
    effective_from: datetime
    cached_input: int | None = None
    reasoning: int | None = None
    cache_write: int | None = None
    project_id: str | None = None
    source: str = OPERATOR


def parse_time(text: str, name: str = "effective_from") -> datetime:
    """An ISO 8601 time or date; one without a zone is UTC."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise AmountError(f"{name} must be an ISO 8601 time, got {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def row_from_dict(obj: dict[str, Any], *, source: str = OPERATOR) -> PriceRow:
    """A row from its file or API form (rates as dollars per million tokens, exact text)."""
    model = obj.get("model")
    if not isinstance(model, str) or not model.strip() or len(model) > 200:
        raise AmountError(f"a price needs a model name (1-200 characters), got {model!r}")
    rates: dict[str, int | None] = {}
    for name in RATES:
        value = obj.get(name)
        if value is None or value == "":
            if name in ("input", "output"):
                raise AmountError(f"the price of {model} needs {name}")
            rates[name] = None
        else:
            if isinstance(value, float):  # a float already lost digits: ask for text
                raise AmountError(f"{name} of {model} must be written as text, got {value!r}")
            rates[name] = rate_from_usd(value, f"{name} of {model}")
    when = obj.get("effective_from") or "1970-01-01T00:00:00Z"
    project = obj.get("project_id") or None
    return PriceRow(
        model=model.strip(),
        input=rates["input"] or 0,
        output=rates["output"] or 0,
        effective_from=when if isinstance(when, datetime) else parse_time(str(when)),
        cached_input=rates["cached_input"],
        reasoning=rates["reasoning"],
        cache_write=rates["cache_write"],
        project_id=str(project) if project is not None else None,
        source=source,
    )


@lru_cache(maxsize=1)
def shipped_rows() -> tuple[PriceRow, ...]:
    """The rows of ``prices.json`` in this package (read once)."""
    text = resources.files(__package__).joinpath("prices.json").read_text("utf-8")
    return tuple(row_from_dict(r, source=SHIPPED) for r in json.loads(text)["prices"])


def shipped_version() -> str:
    text = resources.files(__package__).joinpath("prices.json").read_text("utf-8")
    return str(json.loads(text)["version"])


#: model names whose lookup names a price book remembers
_MAX_NAMES = 1024


class PriceBook:
    """Every row in force, answering "which rates applied to model M of project P at time T".

    A project's own rows come first, then the operator's global rows, then the shipped ones:
    the first of those layers with a row in force at T decides, and within it the row with
    the latest ``effective_from`` not after T. A model with no such row has no price."""

    def __init__(self, rows: Iterable[PriceRow]) -> None:
        # (project_id or "", layer) -> model -> rows by effective_from
        self._rows: dict[tuple[str, int], dict[str, list[PriceRow]]] = {}
        for row in rows:
            layer = 1 if row.source == SHIPPED else 0
            key = (row.project_id or "", layer)
            self._rows.setdefault(key, {}).setdefault(row.model, []).append(row)
        for models in self._rows.values():
            for found in models.values():
                found.sort(key=lambda r: r.effective_from)
        self._names: dict[str, tuple[str, ...]] = {}  # model -> itself and its snapshot-less name
        self._starts = {
            (key, model): [r.effective_from for r in found]
            for key, models in self._rows.items()
            for model, found in models.items()
        }

    def operator_rows(self) -> list[PriceRow]:
        """The rows not shipped, by model, project and time."""
        rows = [
            row
            for (_, layer), models in self._rows.items()
            if layer == 0
            for found in models.values()
            for row in found
        ]
        return sorted(rows, key=lambda r: (r.model, r.project_id or "", r.effective_from))

    def lookup(self, model: str, project_id: str, at: datetime) -> PriceRow | None:
        if not model:
            return None
        names = self._names.get(model)
        if names is None:
            snapshot = _SNAPSHOT.sub("", model)
            names = (model,) if snapshot == model else (model, snapshot)
            if len(self._names) < _MAX_NAMES:  # a client inventing names cannot grow it
                self._names[model] = names
        for key in ((project_id, 0), ("", 0), ("", 1)) if project_id else (("", 0), ("", 1)):
            models = self._rows.get(key)
            if not models:
                continue
            for name in names:
                found = models.get(name)
                if found is None:
                    continue
                i = bisect_right(self._starts[(key, name)], at)
                if i:
                    return found[i - 1]
        return None
