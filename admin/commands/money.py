"""``llm-proxy manage prices ...`` and ``manage usage``: price rows, unpriced models, reports."""

from __future__ import annotations

import csv
import dataclasses
import inspect
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from admin.declared import Shown, page_data
from admin.output import emit, fail
from admin.runner import run
from shared.management import inputs
from shared.management import operations as ops
from shared.management.money import PRICE_FILE_COLUMNS

app = typer.Typer(
    help="Prices per model (dollars per million tokens): the shipped table and your own rows.",
    no_args_is_help=True,
)

PRICE_COLUMNS: tuple[str, ...] = ("model", "project_id", "effective_from", "input", "cached_input")
PRICE_COLUMNS += ("output",)
PRICE_COLUMNS += ("reasoning", "cache_write", "source")
USAGE_COLUMNS: tuple[str, ...] = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens")
USAGE_COLUMNS += ("reasoning_tokens", "cost_usd", "priced_cost_usd", "unpriced")

_CSV = inspect.Parameter(
    "as_csv",
    inspect.Parameter.KEYWORD_ONLY,
    default=False,
    annotation=Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")],
)
_FILE = inspect.Parameter(
    "file",
    inspect.Parameter.KEYWORD_ONLY,
    annotation=Annotated[
        Path, typer.Argument(help="A JSON or CSV price file ('-' for standard input).")
    ],
)


def _csv(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    writer = csv.DictWriter(sys.stdout, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:  # unknown (null) stays an empty cell, never a 0
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})


def _import(ctx: typer.Context, given: inputs.ImportPrices, as_json: bool, extra: Any) -> None:
    path: Path = extra["file"]
    try:
        data = sys.stdin.read() if str(path) == "-" else path.read_text("utf-8")
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
    inp = dataclasses.replace(given, data=data)
    run(ctx, lambda m: m.call(ops.IMPORT_PRICES, inp), as_json=as_json)


def _export(ctx: typer.Context, inp: inputs.NoInput, as_json: bool, extra: Any) -> None:
    def render(result: dict[str, Any], as_json: bool) -> None:
        if extra["as_csv"]:
            _csv(result["prices"], PRICE_FILE_COLUMNS)
        else:  # JSON is the file's form either way: `prices import` reads it back
            emit(result, as_json=True)

    run(ctx, lambda m: m.call(ops.EXPORT_PRICES, inp), as_json=as_json, render=render)


def _usage(ctx: typer.Context, inp: inputs.UsageQuery, as_json: bool, extra: Any) -> None:
    columns = (inp.by, *USAGE_COLUMNS)

    def render(result: dict[str, Any], as_json: bool) -> None:
        if extra["as_csv"]:
            _csv(result["data"], columns)
        elif as_json:
            emit(result, as_json=True)
        else:
            emit(result["data"], as_json=False, columns=columns)
            emit({inp.by: "total", **result["total"]}, as_json=False)

    run(ctx, lambda m: m.call(ops.USAGE_REPORT, inp), as_json=as_json, render=render)


SHOWN = {
    "prices list": Shown(columns=PRICE_COLUMNS, result=page_data),
    "prices unpriced": Shown(result=page_data),
    "prices import": Shown(extra=(_FILE,), perform=_import),
    "prices export": Shown(extra=(_CSV,), perform=_export),
    "usage": Shown(extra=(_CSV,), perform=_usage),
}
