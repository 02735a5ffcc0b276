"""Declared request fields (JSON body members and query parameters): parsing and their schema."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from shared.errors import UserError

Kind = Literal["string", "integer", "boolean", "date-time", "duration"]
_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class Field:
    """One named input of an endpoint. The same declaration parses the input and describes it in
    the OpenAPI schema, so the two cannot disagree."""

    name: str
    kind: Kind
    doc: str
    required: bool = False
    nullable: bool = False
    default: Any = _MISSING
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()
    missing: str = ""  # the message when a required field is absent, if the default is not enough

    @property
    def has_default(self) -> bool:
        return self.default is not _MISSING

    def parse_json(self, value: Any) -> Any:
        """Check a value taken from a JSON body."""
        if value is None:
            if self.nullable:
                return None
            raise UserError(f"{self.name} must not be null")
        if self.kind == "boolean":
            if isinstance(value, bool):
                return value
        elif self.kind == "integer":
            if isinstance(value, int) and not isinstance(value, bool):
                return self._in_range(value)
        elif self.kind == "duration":
            # Hours as a bare number, as the CLI takes them, or a string like "30m" or "never".
            if isinstance(value, int) and not isinstance(value, bool):
                return str(value)
            if isinstance(value, str):
                return value
        elif isinstance(value, str):
            return self._text(value)
        raise UserError(f"{self.name} must be {self.expected}")

    def parse_text(self, text: str) -> Any:
        """Check a value taken from a query string."""
        if self.kind == "integer":
            try:
                return self._in_range(int(text))
            except ValueError:
                raise UserError(f"{self.name} must be {self.expected}, got {text!r}") from None
        if self.kind == "boolean":
            lowered = text.lower()
            if lowered in ("true", "1"):
                return True
            if lowered in ("false", "0"):
                return False
            raise UserError(f"{self.name} must be true or false, got {text!r}")
        return self._text(text)

    def _text(self, text: str) -> Any:
        if self.kind == "date-time":
            try:
                value = datetime.fromisoformat(text)
            except ValueError:
                raise UserError(
                    f"{self.name} must be an ISO 8601 time such as 2025-01-31T12:00:00Z"
                ) from None
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        if self.choices and text not in self.choices:
            raise UserError(f"{self.name} must be one of {', '.join(self.choices)}")
        return text

    def _in_range(self, value: int) -> int:
        if (self.minimum is not None and value < self.minimum) or (
            self.maximum is not None and value > self.maximum
        ):
            raise UserError(f"{self.name} must be {self.expected}, got {value}")
        return value

    @property
    def expected(self) -> str:
        if self.kind == "integer":
            low = "" if self.minimum is None else f" >= {self.minimum}"
            high = "" if self.maximum is None else f" <= {self.maximum}"
            words = "an integer" + (low + " and" + high if low and high else low or high)
        else:
            words = {
                "string": "a string",
                "boolean": "true or false",
                "date-time": "an ISO 8601 time",
                "duration": 'hours (24) or a duration string ("30m", "7d", "never")',
            }[self.kind]
        return words + (" or null" if self.nullable else "")

    def schema(self) -> dict[str, Any]:
        """This field as a JSON Schema (OpenAPI 3.1 dialect)."""
        out: dict[str, Any]
        if self.kind == "duration":
            out = {"type": ["string", "integer"]}
        elif self.kind == "date-time":
            out = {"type": "string", "format": "date-time"}
        else:
            out = {"type": self.kind}
        if self.nullable:
            out["type"] = [
                *([out["type"]] if isinstance(out["type"], str) else out["type"]),
                "null",
            ]
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.choices:
            out["enum"] = list(self.choices)
        if self.has_default:
            out["default"] = self.default
        out["description"] = self.doc
        return out


def _check_names(given: Iterable[str], fields: tuple[Field, ...], what: str) -> None:
    known = {f.name for f in fields}
    for name in given:
        if name not in known:
            allowed = ", ".join(sorted(known)) or "none"
            raise UserError(f"unknown {what} {name!r} (expected: {allowed})")


def _collect(fields: tuple[Field, ...], present: Mapping[str, Any], parse: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields:
        if f.name in present:
            out[f.name] = parse(f, present[f.name])
        elif f.required:
            raise UserError(f.missing or f"{f.name} is required")
        elif f.has_default:
            out[f.name] = f.default
    return out


def parse_body(raw: bytes, fields: tuple[Field, ...]) -> dict[str, Any]:
    """A JSON object body checked against ``fields``: unknown members, missing required ones
    and wrong types are refused with a message naming the member. An empty body is ``{}``."""
    if raw.strip():
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise UserError(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise UserError("the request body must be a JSON object")
    else:
        data = {}
    _check_names(data, fields, "field")
    return _collect(fields, data, Field.parse_json)


def parse_query(params: Mapping[str, str], fields: tuple[Field, ...]) -> dict[str, Any]:
    """Query parameters checked against ``fields`` like a body."""
    _check_names(params, fields, "query parameter")
    return _collect(fields, params, Field.parse_text)
