"""Typer commands built from an operation's declared inputs: options, arguments, help and checks.

A field becomes an argument or an option with its doc as help, its flag and variable; a secret
field also gets ``--NAME-stdin`` and is read without echo from a terminal; a destructive
operation gets ``--yes``. Ranges are left to the service, so the CLI and the API refuse a value
with the same words.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any

import typer

from admin.options import JsonOpt
from admin.output import confirm_or_refuse, emit_detail, emit_usage, fail, read_secret
from admin.runner import Render, run
from shared.deployments import parse_pairs
from shared.errors import LLMProxyError
from shared.management import OPERATIONS, Field, Operation

_TYPES: dict[str, Any] = {
    "string": str,
    "integer": int,
    "boolean": bool,
    "date-time": str,  # read by the field's own parser: an ISO time or a span back (1h)
    "duration": str,
    "integers": list[int],
    "mapping": list[str],  # repeated KEY=VALUE, made a mapping by the field's parser
}


def _parameter(f: Field) -> inspect.Parameter:
    kind = _TYPES[f.kind]
    annotation: Any = kind if f.required or f.default is not None else kind | None
    if f.argument:
        info: Any = typer.Argument(help=f.doc, show_default=False)
    else:
        info = typer.Option(
            f.option,
            help=f.doc,
            envvar=f.envvar,
            show_envvar=f.envvar is not None,
            metavar=f.metavar or None,
            show_default=not f.secret and f.default not in (None, False),
        )
    default = inspect.Parameter.empty if f.required else f.default
    return inspect.Parameter(
        f.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[annotation, info],
    )


def _stdin_parameter(f: Field) -> inspect.Parameter:
    flag = f.option + "-stdin"
    info = typer.Option(flag, help=f"Read {f.name.replace('_', ' ')} from standard input.")
    return inspect.Parameter(
        f.name + "_stdin",
        inspect.Parameter.KEYWORD_ONLY,
        default=False,
        annotation=Annotated[bool, info],
    )


_JSON = inspect.Parameter(
    "as_json", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=JsonOpt
)
_YES = inspect.Parameter(
    "yes",
    inspect.Parameter.KEYWORD_ONLY,
    default=False,
    annotation=Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")],
)


@dataclass(frozen=True, slots=True)
class Shown:
    """How a command prints its operation's reply, when not as a plain table of it."""

    columns: Sequence[str] | None = None
    render: Render | None = None
    result: Callable[[Any], Any] | None = None  # the part of the reply to print
    #: options of the command alone, and what it does instead of one call (``events tail -f``)
    extra: tuple[inspect.Parameter, ...] = ()
    perform: Callable[[typer.Context, Any, bool, dict[str, Any]], None] | None = None


def add_commands(groups: dict[str, typer.Typer], shown: dict[str, Shown]) -> None:
    """One command per declared operation, in its group (``shown`` is keyed "group command"; a
    one-word command goes in ``groups[""]``)."""
    for op in OPERATIONS:
        if op.command:
            group, _, name = op.command.rpartition(" ")  # "project upstream add": a subgroup
            command(groups[group], name, op, shown.get(op.command, Shown()))


def command(app: typer.Typer, name: str, op: Operation[Any], shown: Shown) -> None:
    """Add ``name`` to ``app``: a command whose options are ``op``'s declared inputs."""
    fields = [f for f in op.fields if f.cli]
    params = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
    ]
    params += [_parameter(f) for f in fields]
    params += [_stdin_parameter(f) for f in fields if f.secret]
    params += [_YES] if op.destructive else []
    params += [*shown.extra, _JSON]

    def callback(ctx: typer.Context, **given: Any) -> None:
        as_json = bool(given.pop("as_json"))
        for f in fields:
            if f.secret and given.pop(f.name + "_stdin"):
                if given.get(f.name):
                    fail(
                        f"give the {f.name.replace('_', ' ')} once: {f.option} or "
                        f"{f.option}-stdin, not both",
                        2,
                    )
                given[f.name] = read_secret(f.name.replace("_", " "))
        if op.destructive:
            what = " ".join(str(given[f.name]) for f in fields if f.argument)
            confirm_or_refuse(given.pop("yes"), f"{op.summary.rstrip('.')}: {what}?")
        extras = {p.name: given.pop(p.name) for p in shown.extra}
        for f in fields:
            if f.kind == "date-time" and given.get(f.name) is not None:
                given[f.name] = guard(partial(f.parse_text, given[f.name]))
            elif f.kind == "mapping":  # not given: an empty list
                given[f.name] = (
                    guard(partial(parse_pairs, given[f.name])) if given[f.name] else None
                )
        inputs = op.inputs(**given)
        if shown.perform is not None:
            shown.perform(ctx, inputs, as_json, extras)
            return
        run(
            ctx,
            lambda m: m.call(op, inputs),
            as_json=as_json,
            columns=shown.columns,
            render=shown.render,
            result=shown.result,
        )

    callback.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    callback.__annotations__ = {p.name: p.annotation for p in params}
    callback.__doc__ = op.summary + ("\n\n" + op.description if op.description else "")
    callback.__name__ = name.replace("-", "_")
    app.command(name)(callback)


def page_data(page: Any) -> Any:
    """The rows of a ``{"data": [...]}`` reply, which the CLI prints as a table (or array)."""
    return page["data"]


def usage_table(owner: str, fields: Sequence[str]) -> Render:
    """Print a usage reply: the owner's totals (``fields`` of them), then its events."""
    return lambda result, as_json: emit_usage(result, as_json, owner, fields)


def detail(*lists: str) -> Render:
    """Print a token or project with its ``lists`` (budgets, upstreams) as tables."""
    return lambda result, as_json: emit_detail(result, as_json, *lists)


def guard(parse: Callable[[], Any]) -> Any:
    """A value parsed before any I/O, or its error as the usual one line."""
    try:
        return parse()
    except LLMProxyError as exc:
        fail(exc.message)
