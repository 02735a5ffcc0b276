"""Options shared by hand-written commands (declared operations build their own)."""

from __future__ import annotations

from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document and nothing else.")]
