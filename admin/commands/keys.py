"""``llm-proxy manage keys ...``: the key that encrypts upstream API keys at rest."""

from __future__ import annotations

import typer

from admin.options import JsonOpt
from admin.output import emit
from shared.crypto import new_key

app = typer.Typer(help="Encryption keys for upstream API keys at rest.", no_args_is_help=True)


@app.command("new")
def new(as_json: JsonOpt = False) -> None:
    """Print a fresh ENCRYPTION_KEY (32 random bytes, URL-safe base64).

    Always local: it makes a random key on this machine and talks to no database or server.
    """
    key = new_key()
    if as_json:
        emit({"encryption_key": key}, as_json=True)
    else:
        typer.echo(key)
