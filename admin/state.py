"""The state file of `llm-proxy apply` and `export`: read and checked whole, or written.

Its keys come from the management declarations wherever they can: a project takes the non-secret
fields of ``CreateProject`` (name, base_url, and whatever is declared there next), a token the
fields of ``TokenLimits``, an upstream those of ``AddUpstream``. A key the file leaves out is
left as it is on the deployment; ``null`` means "none". Secrets never appear: an upstream key is
named by ``api_key_env`` or ``api_key_file``, tokens are known by label (their secret exists
only as a hash) and upstreams by base URL.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from shared.errors import UserError
from shared.management import Field, fields_of
from shared.management.checks import check_api_key, parse_token_duration
from shared.management.inputs import AddUpstream, CreateProject, TokenLimits, UpdateUpstream

VERSION = 1
NEVER = "never"


class StateError(UserError):
    """A state file that cannot be applied; the message names the place in the file."""


def project_fields() -> tuple[Field, ...]:
    """The project values a state file sets: what creating a project takes, secrets aside."""
    return tuple(f for f in fields_of(CreateProject) if not f.secret and f.name != "name")


def token_fields() -> tuple[Field, ...]:
    return fields_of(TokenLimits)


def upstream_fields() -> tuple[Field, ...]:
    """An upstream's values in a state file: what adding one takes (but its project and key),
    and whether it is in rotation."""
    added = [f for f in fields_of(AddUpstream) if not f.secret and f.name != "project_id"]
    return (*added, *(f for f in fields_of(UpdateUpstream) if f.name == "enabled"))


@dataclass(frozen=True, slots=True)
class KeyRef:
    """Where the upstream key is found at apply time: an environment variable or a file."""

    env: str | None = None
    file: str | None = None

    @property
    def shown(self) -> str:
        return f"${self.env}" if self.env else f"file {self.file}"

    def read(self, where: str) -> str:
        # The variable's name comes from the state file, not from a setting: this is the one
        # place that reads it, on purpose.
        if self.env:
            value = os.environ.get(self.env)
            if value is None:
                raise StateError(f"{where}.api_key_env: {self.env} is not set")
        else:
            try:
                value = Path(self.file or "").read_text()
            except OSError as exc:
                raise StateError(f"{where}.api_key_file: cannot read it ({exc.strerror})") from None
        try:
            return check_api_key(value)
        except UserError as exc:
            raise StateError(f"{where}: {exc.message}") from None


@dataclass(frozen=True, slots=True)
class TokenSpec:
    where: str  # its place in the file, for messages
    label: str
    id: str | None
    values: dict[str, Any]  # the given limits, "active" and "expires_at" (None: never)
    duration: str | None  # the lifetime of a token yet to be created


@dataclass(frozen=True, slots=True)
class UpstreamSpec:
    where: str
    base_url: str  # what it is matched by (with id, when two share one)
    id: str | None
    values: dict[str, Any]  # the given upstream fields, "enabled" among them
    key: KeyRef | None


@dataclass(frozen=True, slots=True)
class ProjectSpec:
    where: str
    name: str
    values: dict[str, Any]  # the given project fields and "active"
    key: KeyRef | None
    tokens: tuple[TokenSpec, ...] | None  # None: the file does not manage this project's tokens
    upstreams: tuple[UpstreamSpec, ...] | None = None  # None: nor its upstreams


@dataclass(frozen=True, slots=True)
class State:
    projects: tuple[ProjectSpec, ...] = field(default_factory=tuple)


def _mapping(value: Any, where: str, keys: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise StateError(f"{where}: must be a mapping")
    unknown = sorted(str(k) for k in value if k not in keys)
    if unknown:
        raise StateError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(keys))})")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise StateError(f"{where}: must be a list")
    return value


def _value(f: Field, value: Any, where: str) -> Any:
    """A value checked as the management API checks it (type, range, normalisation)."""
    try:
        parsed = f.parse_json(value) if value is not None or not f.nullable else None
        return f.validate(parsed) if parsed is not None else None
    except UserError as exc:
        raise StateError(f"{where}.{f.name}: {exc.message}") from None


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise StateError(f"{where}: must be true or false")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise StateError(f"{where}: must be a non-empty string")
    return value.strip()


def _expiry(value: Any, where: str) -> datetime | None:
    if value == NEVER or value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise StateError(f"{where}: must be an ISO 8601 time or {NEVER!r}") from None
    if not isinstance(value, datetime):
        raise StateError(f"{where}: must be an ISO 8601 time or {NEVER!r}")
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _token(raw: Any, where: str) -> TokenSpec:
    limits = token_fields()
    keys = {"label", "id", "active", "expires_at", "duration", *(f.name for f in limits)}
    raw = _mapping(raw, where, keys)
    if "label" not in raw:
        raise StateError(f"{where}.label: required")
    label = raw["label"]
    if not isinstance(label, str) or len(label) > 200 or "\x00" in label:
        raise StateError(f"{where}.label: must be a string of at most 200 characters")
    values = {f.name: _value(f, raw[f.name], where) for f in limits if f.name in raw}
    if "active" in raw:
        values["active"] = _bool(raw["active"], f"{where}.active")
    if "expires_at" in raw:
        values["expires_at"] = _expiry(raw["expires_at"], f"{where}.expires_at")
    duration = raw.get("duration")
    if duration is not None:
        if "expires_at" in raw:
            raise StateError(f"{where}.duration: give duration or expires_at, not both")
        try:
            parse_token_duration(str(duration))
        except UserError as exc:
            raise StateError(f"{where}.duration: {exc.message}") from None
    token_id = _text(raw["id"], f"{where}.id") if "id" in raw else None
    return TokenSpec(
        where, label.strip(), token_id, values, None if duration is None else str(duration)
    )


def _project(raw: Any, where: str) -> ProjectSpec:
    fields = project_fields()
    keys = {"name", "active", "api_key_env", "api_key_file", "tokens", "upstreams"}
    keys |= {f.name for f in fields}
    raw = _mapping(raw, where, keys)
    if "name" not in raw:
        raise StateError(f"{where}.name: required")
    [name_field] = [f for f in fields_of(CreateProject) if f.name == "name"]
    name = _value(name_field, raw["name"], where)
    values = {f.name: _value(f, raw[f.name], where) for f in fields if f.name in raw}
    if "active" in raw:
        values["active"] = _bool(raw["active"], f"{where}.active")
    tokens = None
    if "tokens" in raw:
        items = _list(raw["tokens"] or [], f"{where}.tokens")
        tokens = tuple(_token(t, f"{where}.tokens[{n}]") for n, t in enumerate(items))
        _unique([(t.id or t.label, t.where) for t in tokens], "token label or id", "token")
    upstreams = None
    if "upstreams" in raw:
        items = _list(raw["upstreams"] or [], f"{where}.upstreams")
        upstreams = tuple(_upstream(u, f"{where}.upstreams[{n}]") for n, u in enumerate(items))
        _unique([(u.id or u.base_url, u.where) for u in upstreams], "upstream at", "upstream")
    return ProjectSpec(where, name, values, _key(raw, where), tokens, upstreams)


def _key(raw: dict[str, Any], where: str) -> KeyRef | None:
    if "api_key_env" in raw and "api_key_file" in raw:
        raise StateError(f"{where}.api_key_file: give api_key_env or api_key_file, not both")
    if "api_key_env" in raw:
        return KeyRef(env=_text(raw["api_key_env"], f"{where}.api_key_env"))
    if "api_key_file" in raw:
        return KeyRef(file=_text(raw["api_key_file"], f"{where}.api_key_file"))
    return None


def _upstream(raw: Any, where: str) -> UpstreamSpec:
    fields = upstream_fields()
    keys = {"id", "api_key_env", "api_key_file", *(f.name for f in fields)}
    raw = _mapping(raw, where, keys)
    if "base_url" not in raw:
        raise StateError(f"{where}.base_url: required")
    values = {f.name: _value(f, raw[f.name], where) for f in fields if f.name in raw}
    upstream_id = _text(raw["id"], f"{where}.id") if "id" in raw else None
    return UpstreamSpec(where, values["base_url"], upstream_id, values, _key(raw, where))


def _unique(names: list[tuple[str, str]], what: str, thing: str) -> None:
    seen: set[str] = set()
    for name, where in names:
        if name in seen:
            raise StateError(f"{where}: a second {what} {name!r} (give the {thing}'s id)")
        seen.add(name)


def parse(text: str, source: str) -> State:
    """The whole file checked before anything is applied; the first problem as a StateError."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise StateError(f"{source}: not valid YAML{line}") from None
    raw = _mapping(raw if raw is not None else {}, source, {"version", "projects"})
    if raw.get("version", VERSION) != VERSION:
        raise StateError(f"{source}.version: this llm-proxy reads version {VERSION}")
    items = _list(raw.get("projects") or [], "projects")
    projects = tuple(_project(p, f"projects[{n}]") for n, p in enumerate(items))
    _unique([(p.name, p.where + ".name") for p in projects], "project named", "project")
    return State(projects)


def key_placeholder(name: str) -> str:
    """The variable an exported project's key is expected in: PROJECT_NAME_API_KEY."""
    stem = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").upper() or "PROJECT"
    return f"{stem if not stem[0].isdigit() else '_' + stem}_API_KEY"


HEADER = """\
# llm-proxy state, written by `llm-proxy export` (docs/config-as-code.md).
# Upstream keys are never exported: each project and upstream names the environment variable
# that `llm-proxy apply` reads its key from when it creates it (or with --set-keys).
# Set those variables (or use api_key_file: PATH) before applying this file elsewhere.
# Tokens are known by label; a token created by apply prints its secret once.
"""


def render(projects: list[dict[str, Any]]) -> str:
    """The state file text for exported projects (plain values, in the file's order)."""
    body: str = yaml.safe_dump(
        {"version": VERSION, "projects": projects}, sort_keys=False, allow_unicode=True
    )
    return HEADER + body
