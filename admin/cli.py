"""The ``llm-proxy`` Typer app: server, dispatcher, migrate and the ``manage`` commands."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from admin.commands import (
    audit,
    cache,
    config,
    events,
    keys,
    money,
    pipeline,
    projects,
    server,
    state,
    tokens,
)
from admin.declared import add_commands
from admin.options import ApiUrlOpt, JsonOpt, ManagementTokenOpt
from admin.output import emit
from admin.remote import RemoteTarget
from admin.runner import guarded, open_store
from shared.config import Settings
from shared.version import package_version

app = typer.Typer(
    name="llm-proxy",
    help="LLM API gateway: proxy server, event dispatcher and management commands.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # tracebacks with local variables could show secrets
)
manage = typer.Typer(
    help="Manage projects, tokens, keys, the audit log, request events and the response cache: "
    "on the database this process is configured for, or on a remote deployment with --api-url.",
    no_args_is_help=True,
)
GROUPS = {
    "project": projects.app,
    "project upstream": projects.upstream_app,
    "token": tokens.app,
    "keys": keys.app,
    "audit": audit.app,
    "cache": cache.app,
    "events": events.app,
    "prices": money.app,
}
add_commands(
    {**GROUPS, "": manage},
    {
        **projects.SHOWN,
        **tokens.SHOWN,
        **audit.SHOWN,
        **cache.SHOWN,
        **events.SHOWN,
        **money.SHOWN,
    },
)
for group, sub in GROUPS.items():
    if " " not in group:  # subgroups hang from their group
        manage.add_typer(sub, name=group)
app.add_typer(manage, name="manage")
app.add_typer(config.app, name="config")
app.command("dispatcher")(pipeline.dispatcher)
app.command("worker")(pipeline.worker)


app.command("server")(server.server)
app.command("apply")(state.apply)
app.command("export")(state.export)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llm-proxy {package_version()}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """LLM API gateway: proxy server, event dispatcher and management commands."""


@manage.callback()
def manage_target(
    ctx: typer.Context,
    api_url: ApiUrlOpt = None,
    management_token: ManagementTokenOpt = None,
) -> None:
    """Manage projects, tokens, keys and the audit log."""
    if api_url:
        ctx.obj = RemoteTarget(api_url, management_token or "")


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
