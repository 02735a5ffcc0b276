"""Printing results: one JSON document with ``--json``, readable tables otherwise."""

from __future__ import annotations

import getpass
import json
import shutil
import sys
from collections.abc import Sequence
from typing import Any

import typer
from rich.console import Console
from rich.table import Table


def _console() -> Console:
    # The terminal's width (COLUMNS wins, as everywhere); a pipe gets the conventional 80.
    return Console(width=shutil.get_terminal_size((80, 24)).columns, highlight=False)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def emit(result: Any, *, as_json: bool, columns: Sequence[str] | None = None) -> None:
    """Print ``result`` (a dict or a list of dicts)."""
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
        return
    if isinstance(result, list):
        if not result:
            _console().print("(none)")
            return
        cols = list(columns or result[0].keys())
        table = Table(*cols)
        for row in result:
            table.add_row(*(_cell(row.get(c)) for c in cols))
        _console().print(table)
        return
    table = Table("field", "value", show_header=False)
    for key, value in result.items():
        table.add_row(key, _cell(value))
    _console().print(table)


EVENT_COLUMNS = (
    "ts",
    "method",
    "path",
    "status",
    "model",
    "duration_ms",
    "prompt_tokens",
    "completion_tokens",
    "usage_source",
    "cache_status",
    "error",
)


def emit_usage(result: dict[str, Any], as_json: bool, owner: str, fields: Sequence[str]) -> None:
    """A token's or project's usage: its totals, then a page of its request events."""
    if as_json:
        emit(result, as_json=True)
        return
    emit({k: result[owner][k] for k in fields}, as_json=False)
    emit(result["events"], as_json=False, columns=EVENT_COLUMNS)
    more_hint("--before-event-id", result["next_before_event_id"])


def budget_line(b: dict[str, Any]) -> str:
    """One budget in words: spent + reserved of the limit, what is left, when it resets."""
    window = f"{b['window']} {'calendar' if b['calendar'] else 'rolling'}"
    parts = []
    if b["limit_usd"] is not None:
        parts.append(
            f"${b['spent_usd']} spent + ${b['reserved_usd']} reserved of ${b['limit_usd']}, "
            f"${b['remaining_usd']} left"
        )
    if b["limit_tokens"] is not None:
        parts.append(
            f"{b['spent_tokens']} + {b['reserved_tokens']} tokens of {b['limit_tokens']}, "
            f"{b['remaining_tokens']} left"
        )
    head = f"{b['owner']} {b['kind']}, {window}, {b['mode']}"
    return f"{head}: {'; '.join(parts)}; resets at {b['resets_at']}"


def emit_detail(result: dict[str, Any], as_json: bool, *lists: str) -> None:
    """A token or project: its fields, then each of its ``lists`` under its name (budgets
    one per line, in words; anything else as a table)."""
    if as_json:
        emit(result, as_json=True)
        return
    emit({k: v for k, v in result.items() if k not in lists}, as_json=False)
    for name in lists:
        sys.stdout.write(f"{name}:\n")
        if name == "budgets":
            lines = [budget_line(b) for b in result[name]] or ["(none)"]
            sys.stdout.write("".join(f"  {line}\n" for line in lines))
        else:
            emit(result[name], as_json=False)


def more_hint(option: str, cursor: object) -> None:
    """Tell a reader of a table how to ask for the next page (on stderr: stdout stays data)."""
    if cursor is not None:
        sys.stderr.write(f"more: repeat with {option} {cursor}\n")


def fail(message: str, code: int = 1) -> None:
    sys.stderr.write(f"error: {message}\n")
    raise SystemExit(code)


def confirm_or_refuse(yes: bool, question: str) -> None:
    """Go on with a destructive action only when told to: ``--yes``, or a yes typed at a
    terminal. Without a terminal (a script, --json) nobody can answer, so refuse."""
    if yes:
        return
    if not sys.stdin.isatty():
        fail("this is destructive and nobody can confirm it here: repeat with --yes", 2)
    typer.confirm(question, abort=True)


def read_secret(what: str) -> str:
    """A secret from standard input: without echo at a terminal, else the first line."""
    if sys.stdin.isatty():
        return getpass.getpass(f"{what}: ").strip()
    return sys.stdin.readline().strip()
