"""Options shared by hand-written commands (declared operations build their own)."""

from __future__ import annotations

from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document and nothing else.")]

ApiUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--api-url",
        envvar="LLM_PROXY_API_URL",
        show_envvar=True,
        help="Send the command to this deployment's management API (e.g. "
        "https://proxy.example.com) instead of opening the database.",
    ),
]
ManagementTokenOpt = Annotated[
    str | None,
    typer.Option(
        "--management-token",
        envvar="MANAGEMENT_TOKEN",
        show_envvar=True,
        show_default=False,
        help="The deployment's MANAGEMENT_TOKEN, for --api-url. Prefer the variable: a flag "
        "lands in shell history.",
    ),
]
