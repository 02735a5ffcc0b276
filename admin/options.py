"""Options shared by many commands."""

from __future__ import annotations

from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document and nothing else.")]
ProjectIdArg = Annotated[str, typer.Argument(help="The project's id.", show_default=False)]
TokenIdArg = Annotated[str, typer.Argument(help="The token's id (not the token itself).")]
EventPageOpt = Annotated[int, typer.Option("--limit", min=1, max=1000, help="Events per page.")]
BeforeEventOpt = Annotated[
    str | None, typer.Option("--before-event-id", help="Page: events older than this one.")
]
