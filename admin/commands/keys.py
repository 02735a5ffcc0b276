"""``llm-proxy manage keys ...``: the key that encrypts upstream API keys at rest."""

from __future__ import annotations

import typer

from admin.options import JsonOpt
from admin.output import emit
from admin.runner import run
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


@app.command("rotate")
def rotate(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Re-encrypt every stored upstream key with ENCRYPTION_KEY.

    Set the new key as ENCRYPTION_KEY and the old one in ENCRYPTION_OLD_KEYS, run this, then
    drop the old key once every process runs with the new settings. With --api-url the remote
    server re-encrypts with its own ENCRYPTION_KEY and ENCRYPTION_OLD_KEYS.
    """
    run(ctx, lambda m: m.rotate_keys(), as_json=as_json)
