"""``llm-proxy manage cache ...``: the HTTP response cache."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from admin.options import JsonOpt
from admin.output import emit
from admin.runner import cli_actor, guarded, open_store
from proxy.cache import build_backend
from shared.config import Settings
from shared.crypto import load_keyring
from shared.manage import Management
from shared.redis import make_redis

app = typer.Typer(help="The HTTP response cache.", no_args_is_help=True)

IN_MEMORY_NOTE = (
    "HTTP_CACHE_BACKEND=in-memory: every proxy worker keeps its own cache in its own memory, "
    "which this command cannot reach; entries there expire with their TTL (HTTP_CACHE_DEFAULT_TTL) "
    "or go when the workers restart. Use the management API of each running proxy, or the redis "
    "backend, to purge them."
)


async def _purge(settings: Settings, project_id: str | None, path_prefix: str | None) -> Any:
    keyring = load_keyring(settings)
    store = await open_store(settings)
    redis = make_redis(settings) if settings.http_cache_backend == "redis" else None
    try:
        backend = build_backend(settings, redis)
        manager = Management(store=store, keyring=keyring, actor=cli_actor())
        return await manager.purge_cache(backend, project_id, path_prefix)
    finally:
        if redis is not None:
            await redis.aclose()
        await store.close()


@app.command("purge")
def purge(
    project_id: Annotated[
        str | None, typer.Option("--project-id", help="Only this project's entries.")
    ] = None,
    path_prefix: Annotated[
        str | None,
        typer.Option(
            "--path-prefix", help="Only entries whose path starts with this (/v1/models)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove cached responses: all of them, one project's, or those under a path prefix.

    With HTTP_CACHE_BACKEND=redis this removes the entries every proxy instance shares (POST and
    Vary-keyed entries included). With the in-memory backend each worker's cache lives in that
    worker, out of this command's reach: it says so and removes nothing.
    """
    result = guarded(lambda settings: _purge(settings, project_id, path_prefix))
    if result["scope"] == "this-process":
        result["note"] = IN_MEMORY_NOTE
        sys.stderr.write(f"note: {IN_MEMORY_NOTE}\n")
    if as_json:
        emit(result, as_json=True)
    else:
        what = f"project {project_id}" if project_id else "all projects"
        where = f" under {path_prefix}" if path_prefix else ""
        typer.echo(
            f"purged {result['purged']} cached responses of {what}{where} ({result['backend']})"
        )
