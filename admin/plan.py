"""What `llm-proxy apply` would change, worked out against the deployment, and doing it.

The plan is made whole before anything changes (so a file that cannot be applied changes
nothing), and every change is one declared management operation, run through ``call`` on the
database or the remote API alike, so it is checked and audited like the same CLI command.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from admin.runner import Manager
from admin.state import (
    NEVER,
    KeyRef,
    ProjectSpec,
    State,
    StateError,
    TokenSpec,
    UpstreamSpec,
    project_fields,
    token_fields,
    upstream_fields,
)
from shared.management import Field, fields_of
from shared.management import operations as ops
from shared.management.inputs import (
    AddUpstream,
    CreateProject,
    DeactivateProject,
    GenerateToken,
    ListTokens,
    ListUpstreams,
    NoInput,
    ProjectRef,
    TokenRef,
    UpdateProject,
    UpdateToken,
    UpdateUpstream,
    UpstreamRef,
)

Step = Callable[[Manager], Awaitable[Any]]


class _Entry(Protocol):
    @property
    def where(self) -> str: ...

    @property
    def id(self) -> str | None: ...


S = TypeVar("S", bound=_Entry)


@dataclass(slots=True)
class Change:
    """One line of the diff and the management call that makes it."""

    action: str  # create, update, activate, deactivate, revoke, remove
    target: str  # "project NAME", "token PROJECT/LABEL" or "upstream PROJECT/BASE_URL"
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # name: (now, wanted)
    destructive: bool = False  # only --prune's changes
    step: Step | None = None
    new_token: tuple[str, str] | None = None  # (project, label) of a token this creates

    def line(self) -> str:
        mark = {"create": "+", "update": "~", "activate": "~"}.get(self.action, "-")
        text = f"{mark} {self.action} {self.target}"
        if self.fields and self.action == "create":
            text += ": " + ", ".join(f"{k} {_shown(b)}" for k, (_, b) in self.fields.items())
        elif self.fields:
            text += ": " + ", ".join(
                f"{k} {_shown(a)} -> {_shown(b)}" for k, (a, b) in self.fields.items()
            )
        return text

    def document(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "target": self.target,
            "fields": {k: {"from": a, "to": b} for k, (a, b) in self.fields.items()},
        }


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return repr(value) if isinstance(value, str) else str(value)


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _viewed(f: Field, value: Any) -> Any:
    """A wanted value as the deployment's views show it."""
    if f.kind == "mapping":
        return value or {}
    if f.kind == "boolean":
        return bool(value)
    return None if value == "" else value  # "" removes a text value


def _unset(f: Field, where: str) -> Any:
    """The input value that removes what a field holds (a file's null), where there is one."""
    if f.kind == "mapping" or f.kind == "boolean":
        return {} if f.kind == "mapping" else False
    blank = {"string": "", "integer": 0}.get(f.kind)
    if blank is not None and f.stored is not None and f.stored(blank) is None:
        return blank
    raise StateError(f"{where}.{f.name}: apply cannot unset it; give a value")


def _changed(
    fields: Sequence[Field], values: dict[str, Any], existing: dict[str, Any], where: str
) -> tuple[dict[str, tuple[Any, Any]], dict[str, Any]]:
    """The values that differ from the deployment's: as the diff shows them, and as the update
    operation takes them (a null as the value that removes it)."""
    by_name = {f.name: f for f in fields}
    shown: dict[str, tuple[Any, Any]] = {}
    given: dict[str, Any] = {}
    for name, want in values.items():
        f = by_name[name]
        if existing.get(name) != _viewed(f, want):
            shown[name] = (existing.get(name), want)
            given[name] = want if want is not None else _unset(f, where)
    return shown, given


def _new_key(key: KeyRef | None, where: str, set_keys: bool) -> tuple[str | None, dict[str, Any]]:
    """With --set-keys, the key a file names, and how the diff shows it (by reference only)."""
    if not set_keys or key is None:
        return None, {}
    return key.read(where), {"api_key": (None, key.shown)}


async def current(manager: Manager) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The deployment's projects and its tokens that are not revoked (revoked ones are gone)."""
    projects = (await manager.call(ops.LIST_PROJECTS, NoInput()))["data"]
    tokens = (await manager.call(ops.LIST_TOKENS, ListTokens()))["data"]
    return projects, [t for t in tokens if t["revoked_at"] is None]


async def upstreams_of(manager: Manager, project_id: str) -> list[dict[str, Any]]:
    """A project's upstreams, by priority."""
    data: list[dict[str, Any]] = (
        await manager.call(ops.LIST_UPSTREAMS, ListUpstreams(project_id=project_id))
    )["data"]
    return data


async def make_plan(manager: Manager, state: State, *, prune: bool, set_keys: bool) -> list[Change]:
    projects, tokens = await current(manager)
    by_name = {p["name"]: p for p in projects}
    changes: list[Change] = []
    for spec in state.projects:
        existing = by_name.get(spec.name)
        project_tokens = [t for t in tokens if existing and t["project_id"] == existing["id"]]
        ups = []
        if existing is not None and spec.upstreams is not None:
            ups = await upstreams_of(manager, existing["id"])
        changes += _project_changes(
            spec, existing, project_tokens, ups, prune=prune, set_keys=set_keys
        )
    if prune:
        named = {p.name for p in state.projects}
        for project in projects:
            if project["name"] not in named:
                live = [t for t in tokens if t["project_id"] == project["id"]]
                changes += _prune_project(project, live)
    return changes


def _project_changes(
    spec: ProjectSpec,
    existing: dict[str, Any] | None,
    tokens: list[dict[str, Any]],
    upstreams: list[dict[str, Any]],
    *,
    prune: bool,
    set_keys: bool,
) -> list[Change]:
    target = f"project {spec.name}"
    wanted = {k: v for k, v in spec.values.items() if k != "active"}
    active = spec.values.get("active")
    before: list[Change] = []
    after: list[Change] = []
    ref = existing["id"] if existing else spec.name
    if existing is None:
        if spec.key is None:
            raise StateError(f"{spec.where}: a new project needs api_key_env or api_key_file")
        create = CreateProject(name=spec.name, api_key=spec.key.read(spec.where), **wanted)
        fields = {k: (None, v) for k, v in wanted.items()}
        before.append(Change("create", target, fields, step=_do(ops.CREATE_PROJECT, create)))
    else:
        fields, given = _changed(project_fields(), wanted, existing, spec.where)
        key, shown_key = _new_key(spec.key, spec.where, set_keys)
        updatable = {f.name for f in fields_of(UpdateProject)}
        for name in fields:
            if name not in updatable:
                raise StateError(f"{spec.where}.{name}: cannot be changed once the project exists")
        if fields or key is not None:
            update = UpdateProject(project_id=ref, api_key=key, **given)
            shown = {**fields, **shown_key}
            before.append(Change("update", target, shown, step=_do(ops.UPDATE_PROJECT, update)))
    is_active = existing["is_active"] if existing else True
    if active is True and not is_active:
        before.insert(
            0,
            Change("activate", target, step=_do(ops.ACTIVATE_PROJECT, ProjectRef(project_id=ref))),
        )
    if active is False and is_active:
        off = DeactivateProject(project_id=ref)
        after.append(Change("deactivate", target, step=_do(ops.DEACTIVATE_PROJECT, off)))
    middle = []
    if spec.upstreams is not None:
        middle += _upstream_changes(spec, ref, upstreams, prune=prune, set_keys=set_keys)
    if spec.tokens is not None:
        middle += _token_changes(spec, ref, tokens, prune=prune)
    return before + middle + after


def _prune_project(project: dict[str, Any], live: list[dict[str, Any]]) -> list[Change]:
    """A project the file no longer names is deactivated and its tokens revoked (kept, not
    deleted, so that its history keeps a name and a later file can bring it back)."""
    target = f"project {project['name']}"
    if project["is_active"]:
        off = DeactivateProject(project_id=project["id"], revoke_tokens=True)
        fields = {"tokens_revoked": (len(live), 0)} if live else {}
        step = _do(ops.DEACTIVATE_PROJECT, off)
        return [Change("deactivate", target, fields, destructive=True, step=step)]
    if live:
        step = _do(ops.REVOKE_PROJECT_TOKENS, ProjectRef(project_id=project["id"]))
        fields = {"tokens": (len(live), 0)}
        return [Change("revoke", f"tokens of {target}", fields, destructive=True, step=step)]
    return []


@dataclass(frozen=True, slots=True)
class _Kind:
    """How the entries of one list of a project (tokens, upstreams) meet the deployment's."""

    key: str  # the view field an entry is matched by when it gives no id
    what: str  # "live token of project P", for the errors
    alike: str  # "tokens of project P are labelled", for the errors


def _reconcile(
    kind: _Kind,
    specs: Sequence[S],
    existing: list[dict[str, Any]],
    value: Callable[[S], str],
    create: Callable[[S], Change],
    update: Callable[[S, dict[str, Any]], Change | None],
    retire: Callable[[dict[str, Any]], Change] | None,
) -> list[Change]:
    """The changes that make ``existing`` what ``specs`` say: each entry matched by its id, else
    by ``value`` among the items no entry names by id; with ``retire`` (``--prune``), the items
    no entry matched are retired."""
    changes: list[Change] = []
    taken = {spec.id for spec in specs if spec.id is not None}
    matched: set[str] = set()
    for spec in specs:
        if spec.id is not None:
            found = [t for t in existing if t["id"] == spec.id]
            if not found:
                raise StateError(f"{spec.where}.id: no {kind.what} has this id")
        else:
            found = [t for t in existing if t[kind.key] == value(spec) and t["id"] not in taken]
            if len(found) > 1:
                raise StateError(
                    f"{spec.where}: {len(found)} {kind.alike} {value(spec)!r}: name each by its id"
                )
        if not found:
            changes.append(create(spec))
            continue
        matched.add(found[0]["id"])
        if (change := update(spec, found[0])) is not None:
            changes.append(change)
    if retire is not None:
        changes += [retire(t) for t in existing if t["id"] not in matched]
    return changes


def _token_changes(
    spec: ProjectSpec, ref: str, tokens: list[dict[str, Any]], *, prune: bool
) -> list[Change]:
    def target(token: TokenSpec) -> str:
        return f"token {spec.name}/{token.label or '(no label)'}"

    def revoke(t: dict[str, Any]) -> Change:
        step = _do(ops.REVOKE_TOKEN, TokenRef(token_id=t["id"]))
        return Change(
            "revoke", f"token {spec.name}/{t['label'] or t['id']}", destructive=True, step=step
        )

    words = _Kind(
        "label", f"live token of project {spec.name}", f"tokens of project {spec.name} are labelled"
    )
    return _reconcile(
        words,
        spec.tokens or (),
        tokens,
        lambda token: token.label,
        lambda token: _create_token(token, ref, target(token), spec.name),
        lambda token, found: _update_token(token, found, target(token)),
        revoke if prune else None,
    )


def _create_token(token: TokenSpec, ref: str, target: str, project: str) -> Change:
    limits = {f.name: token.values[f.name] for f in token_fields() if f.name in token.values}
    expiry: dict[str, Any] = {"duration": token.duration or "24"}
    if "expires_at" in token.values:
        when = token.values["expires_at"]
        expiry = {"duration": NEVER} if when is None else {"expires_at": when}
    generate = GenerateToken(project_id=ref, label=token.label, **limits, **expiry)
    shown = {k: (None, v) for k, v in {**limits, **expiry}.items()}
    change = Change("create", target, shown, step=_do(ops.GENERATE_TOKEN, generate))
    change.new_token = (project, token.label)
    if token.values.get("active") is False:
        # made, then disabled: a token cannot be generated disabled
        change.fields["active"] = (None, False)
        change.step = _then_disable(generate)
    return change


def _update_token(token: TokenSpec, existing: dict[str, Any], target: str) -> Change | None:
    fields: dict[str, tuple[Any, Any]] = {}
    given: dict[str, Any] = {}
    for f in token_fields():
        if f.name not in token.values:
            continue
        want = token.values[f.name]
        stored = f.stored(want) if f.stored is not None and want is not None else want
        if existing[f.name] == stored:
            continue
        fields[f.name] = (existing[f.name], want)
        if want is not None:
            given[f.name] = want
        elif f.name == "max_requests":
            given["unlimited"] = True
        else:
            given[f.name] = _unset(f, token.where)
    if "expires_at" in token.values:
        want_at, now_at = token.values["expires_at"], _when(existing["expires_at"])
        if want_at != now_at:
            fields["expires_at"] = (now_at, want_at)
            given.update({"duration": NEVER} if want_at is None else {"expires_at": want_at})
    if "active" in token.values and token.values["active"] != existing["is_active"]:
        fields["active"] = (existing["is_active"], token.values["active"])
        given["activate"] = token.values["active"]
    if not fields:
        return None
    update = UpdateToken(token_id=existing["id"], **given)
    return Change("update", target, fields, step=_do(ops.UPDATE_TOKEN, update))


def _upstream_changes(
    spec: ProjectSpec,
    ref: str,
    existing: list[dict[str, Any]],
    *,
    prune: bool,
    set_keys: bool,
) -> list[Change]:
    """Upstreams are matched by base URL within their project (by id when two share one)."""

    def update(up: UpstreamSpec, found: dict[str, Any]) -> Change | None:
        fields, given = _changed(upstream_fields(), up.values, found, up.where)
        key, shown_key = _new_key(up.key, up.where, set_keys)
        if not fields and key is None:
            return None
        change = UpdateUpstream(upstream_id=found["id"], project_id=ref, api_key=key, **given)
        target = f"upstream {spec.name}/{up.base_url}"
        return Change(
            "update", target, {**fields, **shown_key}, step=_do(ops.UPDATE_UPSTREAM, change)
        )

    def remove(u: dict[str, Any]) -> Change:
        step = _do(ops.REMOVE_UPSTREAM, UpstreamRef(upstream_id=u["id"], project_id=ref))
        target = f"upstream {spec.name}/{u['base_url']}"
        return Change("remove", target, destructive=True, step=step)

    words = _Kind(
        "base_url", f"upstream of project {spec.name}", f"upstreams of project {spec.name} are at"
    )
    return _reconcile(
        words,
        spec.upstreams or (),
        existing,
        lambda up: up.base_url,
        lambda up: _add_upstream(up, ref, f"upstream {spec.name}/{up.base_url}"),
        update,
        remove if prune else None,
    )


def _add_upstream(up: UpstreamSpec, ref: str, target: str) -> Change:
    if up.key is None:
        raise StateError(f"{up.where}: a new upstream needs api_key_env or api_key_file")
    values = {k: v for k, v in up.values.items() if k != "enabled"}
    add = AddUpstream(project_id=ref, api_key=up.key.read(up.where), **values)
    change = Change("create", target, {k: (None, v) for k, v in up.values.items()})
    change.step = _do(ops.ADD_UPSTREAM, add)
    if up.values.get("enabled") is False:  # added, then taken out of rotation

        async def step(manager: Manager) -> Any:
            made = await manager.call(ops.ADD_UPSTREAM, add)
            off = UpdateUpstream(upstream_id=made["id"], enabled=False)
            return await manager.call(ops.UPDATE_UPSTREAM, off)

        change.step = step
    return change


def _do(op: Any, inp: Any) -> Step:
    return lambda manager: manager.call(op, inp)


def _then_disable(generate: GenerateToken) -> Step:
    async def step(manager: Manager) -> Any:
        made = await manager.call(ops.GENERATE_TOKEN, generate)
        await manager.call(ops.UPDATE_TOKEN, UpdateToken(token_id=made["id"], activate=False))
        return made

    return step
