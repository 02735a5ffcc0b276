"""The documentation stays in step with the code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer

from admin.cli import app
from shared.config import generated_blocks, markdown_table

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_settings_table_matches_the_code() -> None:
    text = (DOCS / "configuration.md").read_text()
    table = text.split("<!-- settings:begin -->\n", 1)[1].split("\n<!-- settings:end -->", 1)[0]
    documented = dict(re.findall(r"^\| `([A-Z0-9_]+)` \| ([^|]*) \|", table, re.M))
    expected = dict(re.findall(r"^\| `([A-Z0-9_]+)` \| ([^|]*) \|", markdown_table(), re.M))
    missing = sorted(set(expected) - set(documented))
    stale = sorted(set(documented) - set(expected))
    assert not missing, f"in code, not in docs/configuration.md: {missing}"
    assert not stale, f"in docs/configuration.md, not in code: {stale}"
    assert table == markdown_table(), "regenerate the table with `python -m shared.config`"


def test_generated_tables_match_the_code() -> None:
    text = (DOCS / "configuration.md").read_text()
    for name, table in generated_blocks().items():
        block = text.split(f"<!-- {name}:begin -->\n", 1)[1].split(f"\n<!-- {name}:end -->", 1)[0]
        assert block == table, f"regenerate the {name} table with `python -m shared.config --write`"


def _cli_envvars(command: Any) -> set[str]:
    found: set[str] = set()
    for param in command.params:
        envvar = getattr(param, "envvar", None)
        if isinstance(envvar, str):
            found.add(envvar)
        elif envvar:
            found.update(envvar)
    for sub in getattr(command, "commands", {}).values():
        found |= _cli_envvars(sub)
    return found


def test_cli_variables_are_documented() -> None:
    text = (DOCS / "configuration.md").read_text()
    section = text.split("## Command-line variables", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", section, re.M))
    assert documented == _cli_envvars(typer.main.get_command(app))
