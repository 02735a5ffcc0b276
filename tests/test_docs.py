"""The documentation stays in step with the code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer
from prometheus_client import generate_latest

from admin.cli import app
from dispatcher.metrics import DispatcherMetrics
from proxy.metrics import Metrics, render
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


# A metric name as docs write it: our prefix, the seed's aliases, or any counter-looking `x_total`.
_METRIC = re.compile(r"\b((?:llm_proxy_[a-z0-9_]+)|(?:[a-z][a-z0-9_]*_total))\b")
_OPERATOR_TEXT = [
    *DOCS.glob("*.md"),
    DOCS.parent / "README.md",
    *(DOCS.parent / "compose").glob("*"),
    *(p for p in (DOCS.parent / "helm").rglob("*") if p.is_file()),
]


def _exposed() -> set[str]:
    """Every name the proxy's and the dispatcher's /metrics can expose: the exposition of a fresh
    registry lists each family, labelled ones included (the same render() /metrics uses)."""
    text = (
        render(Metrics().registry)[0].decode()
        + generate_latest(DispatcherMetrics().registry).decode()
    )
    names = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    histograms = set(re.findall(r"^# TYPE (\S+) histogram", text, re.M))
    for name in histograms:
        names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
    return {n for n in names if not n.endswith("_created")}


def test_metric_names_in_the_docs_are_the_ones_exposed() -> None:
    exposed = _exposed()
    for path in _OPERATOR_TEXT:
        if path.suffix not in (".md", ".yml", ".yaml", ".json", ".txt"):
            continue
        named = set(_METRIC.findall(path.read_text()))
        stale = sorted(n for n in named if n not in exposed and not n.startswith("llm_proxy_test"))
        assert not stale, f"{path.relative_to(DOCS.parent)} names metrics /metrics lacks: {stale}"


def test_every_exposed_metric_is_in_the_operations_tables() -> None:
    documented = set(_METRIC.findall((DOCS / "operations.md").read_text()))
    exposed = {n for n in _exposed() if not re.search(r"_(bucket|sum|count)$", n)}
    assert not sorted(exposed - documented), "add them to docs/operations.md 'Metrics'"
