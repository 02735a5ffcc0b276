"""``llm-proxy manage audit ...``"""

from __future__ import annotations

from typing import Any

import typer

from admin.declared import Shown
from admin.output import emit, more_hint

app = typer.Typer(help="The audit log of management actions.", no_args_is_help=True)

COLUMNS = ("id", "ts", "actor", "action", "target_id", "outcome", "details")


def _print_page(page: dict[str, Any], as_json: bool) -> None:
    # --json stays a plain array (scripts page with the last entry's id as --before-id).
    emit(page["data"], as_json=as_json, columns=COLUMNS)
    if not as_json:
        more_hint("--before-id", page["next_before_id"])


SHOWN = {"audit list": Shown(render=_print_page)}
