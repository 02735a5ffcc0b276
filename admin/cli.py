"""The ``llm-proxy`` Typer app: server, dispatcher, migrate and the ``manage`` commands."""

from __future__ import annotations

from typing import Any

import typer

from admin.commands import audit, events, keys, pipeline, projects, tokens
from admin.options import JsonOpt
from admin.output import emit
from admin.runner import guarded, open_store
from shared.config import Settings

app = typer.Typer(
    name="llm-proxy",
    help="LLM API gateway: proxy server, event dispatcher and management commands.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # tracebacks with local variables could show secrets
    add_completion=False,
)
manage = typer.Typer(
    help="Manage projects, tokens, keys, the audit log and request events.", no_args_is_help=True
)
manage.add_typer(projects.app, name="project")
manage.add_typer(tokens.app, name="token")
manage.add_typer(keys.app, name="keys")
manage.add_typer(audit.app, name="audit")
manage.add_typer(events.app, name="events")
app.add_typer(manage, name="manage")
app.command("dispatcher")(pipeline.dispatcher)
app.command("worker")(pipeline.worker)


@app.command("migrate")
def migrate(as_json: JsonOpt = False) -> None:
    """Apply pending database migrations (safe to run from several processes at once)."""

    async def body(settings: Settings) -> dict[str, Any]:
        store = await open_store(settings, check_schema=False)
        try:
            applied = await store.migrate()
            version = await store.schema_version()
        finally:
            await store.close()
        return {"applied": applied, "schema_version": version, "driver": settings.db_driver}

    result = guarded(body)
    if as_json:
        emit(result, as_json=True)
    elif result["applied"]:
        typer.echo(
            f"applied migrations {result['applied']}; schema is at version "
            f"{result['schema_version']}"
        )
    else:
        typer.echo(f"schema is up to date (version {result['schema_version']})")


def main() -> None:
    app()
