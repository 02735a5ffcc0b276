"""How a management input is declared: one ``Field`` per value, read by every client of it.

A field's metadata says what the value means (doc), its type, range and choices, where it travels
over HTTP (path, query or body) and how the CLI takes it. The service checks inputs with it, the
API parses requests and publishes its OpenAPI schema from it, the remote client encodes requests
from it and the CLI builds its options from it, so none of them can disagree with another.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any, Generic, Literal, TypeVar

from shared.clock import utcnow
from shared.errors import UserError
from shared.management.checks import parse_since

Kind = Literal["string", "integer", "boolean", "date-time", "duration", "integers", "mapping"]
Where = Literal["path", "query", "body"]
REQUIRED: Any = type("Required", (), {"__repr__": lambda self: "REQUIRED"})()
I = TypeVar("I")  # noqa: E741 - an operation's input class


@dataclass(frozen=True, slots=True)
class Field:
    """One named input of an operation. Build it with ``inp()`` inside an input dataclass."""

    kind: Kind
    doc: str
    name: str = ""  # the dataclass attribute; filled in by ``fields_of``
    default: Any = REQUIRED
    nullable: bool = False  # the API takes null (meaning the same as leaving it out)
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()
    invalid: str = ""  # the message for a value out of range, when a generic one says too little
    missing: str = ""  # the message for an absent required value
    check: Callable[[Any], Any] | None = None  # normalises a given value or raises UserError
    stored: Callable[[Any], Any] | None = None  # how a given value is stored, when not as is
    secret: bool = False  # never audited in clear; the CLI reads it without echo
    flag: str = ""  # the CLI option ("--name" by default; "--on/--off" for a pair)
    metavar: str = ""  # how the CLI's help shows the value, when not by its type
    argument: bool = False  # a positional argument of the CLI, a path parameter of the API
    envvar: str | None = None  # the CLI also reads it from this variable
    cli: bool = True  # offered by the generated CLI command

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def validate(self, value: Any) -> Any:
        """A given (non-None) value checked against the declared range, choices and check."""
        if isinstance(value, str) and self.choices and value not in self.choices:
            raise UserError(f"{self.name} must be one of {', '.join(self.choices)}")
        if self.kind == "integer" and not self._in_range(value):
            raise UserError(self.invalid or f"{self.name} must be {self.expected}, got {value}")
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return self.check(value) if self.check is not None else value

    def _in_range(self, value: int) -> bool:
        low, high = self.minimum, self.maximum
        return (low is None or value >= low) and (high is None or value <= high)

    def parse_json(self, value: Any) -> Any:
        """Check the type of a value taken from a JSON body (ranges: ``validate``)."""
        if value is None:
            if self.nullable:
                return None
            raise UserError(f"{self.name} must not be null")
        if self.kind == "boolean":
            if isinstance(value, bool):
                return value
        elif self.kind == "integer":
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif self.kind == "integers":
            if isinstance(value, list) and all(
                isinstance(v, int) and not isinstance(v, bool) and 1 <= v < 2**63 for v in value
            ):
                return value
        elif self.kind == "mapping":
            if isinstance(value, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                return value
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
        """Check the type of a value taken from a query string or a path."""
        if self.kind == "integer":
            try:
                return int(text)
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

    def encode(self, value: Any, where: Where) -> Any:
        """The value as the remote client sends it: what parse_json or parse_text reads back."""
        if isinstance(value, datetime):
            return value.isoformat()
        if where == "body":
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    def _text(self, text: str) -> Any:
        if self.kind == "date-time":
            return parse_since(text, utcnow())
        return text

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
                "date-time": "an ISO 8601 time or a span back from now (1h)",
                "duration": 'hours (24) or a duration string ("30m", "7d", "never")',
                "integers": "an array of positive 64-bit integers",
                "mapping": "an object whose values are strings",
            }[self.kind]
        return words + (" or null" if self.nullable else "")

    def schema(self) -> dict[str, Any]:
        """This field as a JSON Schema (OpenAPI 3.1 dialect)."""
        out: dict[str, Any]
        if self.kind == "duration":
            out = {"type": ["string", "integer"], "minLength": 1, "minimum": 1}
        elif self.kind == "date-time":
            out = {"type": "string", "format": "date-time"}
        elif self.kind == "integers":
            item = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
            out = {"type": "array", "items": item, "maxItems": 10_000}
        elif self.kind == "mapping":
            out = {"type": "object", "additionalProperties": {"type": "string"}}
        else:
            out = {"type": self.kind}
        if self.nullable:
            out["type"] = [
                *([out["type"]] if isinstance(out["type"], str) else out["type"]),
                "null",
            ]
        if self.kind == "string":
            out["pattern"] = "^[^\\u0000]*$"
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.choices:
            out["enum"] = list(self.choices)
        if not self.required and self.default is not None:
            out["default"] = self.default
        out["description"] = self.doc
        return out


def inp(kind: Kind, doc: str, *, default: Any = REQUIRED, **meta: Any) -> Any:
    """Declare one input field of an operation (the management counterpart of ``var()``)."""
    spec = Field(kind, doc, default=default, **meta)
    missing = dataclasses.MISSING if default is REQUIRED else default
    return dataclasses.field(default=missing, metadata={"input": spec})


def fields_of(cls: type) -> tuple[Field, ...]:
    """The declared fields of an input dataclass, in declaration order."""
    return _fields(cls)


@cache
def _fields(cls: Any) -> tuple[Field, ...]:
    return tuple(
        dataclasses.replace(f.metadata["input"], name=f.name) for f in dataclasses.fields(cls)
    )


def validated(value: I) -> I:
    """``value`` with every given field checked and normalised; absent (None) ones stay."""
    changes = {
        f.name: f.validate(v)
        for f in fields_of(type(value))
        if (v := getattr(value, f.name)) is not None
    }
    return dataclasses.replace(value, **changes)  # type: ignore[type-var]


def stored_values(value: object, names: frozenset[str], *, given_only: bool) -> dict[str, Any]:
    """The ``names`` fields of an input as columns (same names), as each field stores them;
    ``given_only``: without those left out (None)."""
    out: dict[str, Any] = {}
    for f in fields_of(type(value)):
        if f.name not in names:
            continue
        v = getattr(value, f.name)
        if v is not None and f.stored is not None:
            v = f.stored(v)
        elif v is None and given_only:
            continue
        out[f.name] = v
    return out


def refuse_nul(value: object) -> None:
    """Refuse any text input holding a NUL: no database column (nor the audit row) can keep it."""
    for f in fields_of(type(value)):
        text = getattr(value, f.name)
        if isinstance(text, str) and "\x00" in text:
            raise UserError(f"{f.name} must not contain NUL characters")


def audit_details(value: object) -> dict[str, Any]:
    """What the audit log keeps of an input: the values given, secrets only as given or not."""
    out: dict[str, Any] = {}
    for f in fields_of(type(value)):
        v = getattr(value, f.name)
        if f.secret:
            out[f.name] = v is not None
        elif v is not None and not f.argument:
            out[f.name] = v.isoformat() if isinstance(v, datetime) else v
    return out


@dataclass(frozen=True, slots=True)
class Operation(Generic[I]):
    """One management action: its input class, its service method and its HTTP endpoint."""

    command: str  # the CLI's group and command ("project create"); "" when not one of its own
    name: str  # the Management method that performs it
    inputs: type[I]
    method: str
    path: str  # relative to /manage, Starlette syntax: /projects/{project_id}
    operation_id: str  # OpenAPI operationId
    summary: str
    response: str  # the name of a reply schema
    status: int = 200
    description: str = ""  # the longer help, for the CLI and OpenAPI
    destructive: bool = False  # the CLI asks first, and refuses without --yes when it cannot

    @property
    def fields(self) -> tuple[Field, ...]:
        return fields_of(self.inputs)

    @property
    def takes_body(self) -> bool:
        return self.method in ("POST", "PATCH", "PUT")

    def located(self, where: Where) -> tuple[Field, ...]:
        """The fields that travel in the path (the CLI's arguments), the query or the body."""
        if where == "path":
            return tuple(f for f in self.fields if f.argument)
        if (where == "body") != self.takes_body:
            return ()
        return tuple(f for f in self.fields if not f.argument)
