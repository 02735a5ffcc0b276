"""``llm-proxy config show|check``: the effective settings and where each came from."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

import typer

from admin.options import JsonOpt
from admin.output import emit, fail
from shared.config import explain
from shared.errors import LLMProxyError

app = typer.Typer(help="Inspect and validate the configuration without starting anything.")


@app.command("show")
def show(as_json: JsonOpt = False) -> None:
    """Every setting's effective value (secrets masked) and its source: default, a profile
    (profile:NAME), or the environment (environment:NAME when a tuning-guide name set it)."""
    try:
        _, rows, notices = explain()
    except LLMProxyError as exc:
        fail(exc.message)
    if as_json:
        sys.stdout.write(
            json.dumps({"settings": [asdict(r) for r in rows], "notices": notices}, indent=2) + "\n"
        )
        return
    emit([asdict(r) for r in rows], as_json=False, columns=("variable", "value", "source"))
    for notice in notices:
        typer.echo(f"notice: {notice}", err=True)


@app.command("check")
def check() -> None:
    """Validate every variable as the server would at start (no connection is made); exit 1
    with one line naming the first bad one. Variables that have no effect are listed."""
    try:
        _, _, notices = explain()
    except LLMProxyError as exc:
        fail(exc.message)
    for notice in notices:
        typer.echo(f"notice: {notice}", err=True)
    typer.echo("configuration ok")
