"""``llm-proxy manage token ...``"""

from __future__ import annotations

from typing import Annotated

import typer

from admin.options import BeforeEventOpt, EventPageOpt, JsonOpt, TokenIdArg
from admin.output import emit_usage, fail
from admin.runner import run

app = typer.Typer(help="Generate, inspect and revoke proxy tokens.", no_args_is_help=True)

COLUMNS = (
    "id",
    "prefix",
    "project_id",
    "state",
    "request_count",
    "max_requests",
    "cache_hit_count",
    "expires_at",
    "label",
)
DurationOpt = Annotated[
    str | None,
    typer.Option(
        "--duration",
        help="Lifetime: hours (24) or with a unit (30m, 24h, 7d); 'never' for no expiry.",
    ),
]
MaxRequestsOpt = Annotated[
    int | None, typer.Option("--max-requests", help="Requests allowed in the token's lifetime.")
]
RpmOpt = Annotated[
    int | None,
    typer.Option(
        "--rpm",
        help="Requests per minute for this token (sliding window); 0 = no per-token rate limit. "
        "Omitted: DISTRIBUTED_RATE_LIMIT_MAX applies when distributed limits are on.",
    ),
]
MaxConcurrencyOpt = Annotated[
    int | None,
    typer.Option(
        "--max-concurrency", help="Requests this token may have in flight at once; 0 = no cap."
    ),
]


@app.command("generate")
def generate(
    ctx: typer.Context,
    project_id: Annotated[str, typer.Option("--project-id", help="The project to issue for.")],
    duration: DurationOpt = "24",
    max_requests: MaxRequestsOpt = None,
    label: Annotated[str, typer.Option("--label", help="A note to recognise the token by.")] = "",
    rpm: RpmOpt = None,
    max_concurrency: MaxConcurrencyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Issue a token. It is printed in full this once; store it safely."""
    run(
        ctx,
        lambda m: m.generate_token(
            project_id,
            duration=duration,
            max_requests=max_requests,
            label=label,
            rpm=rpm,
            max_concurrency=max_concurrency,
        ),
        as_json=as_json,
    )


@app.command("list")
def list_(
    ctx: typer.Context,
    project_id: Annotated[
        str | None, typer.Option("--project-id", help="Only this project's tokens.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List tokens (masked) with usage, expiry and state."""
    run(ctx, lambda m: m.list_tokens(project_id), as_json=as_json, columns=COLUMNS)


@app.command("show")
def show(ctx: typer.Context, token_id: TokenIdArg, as_json: JsonOpt = False) -> None:
    """Show one token with its usage and remaining quota."""
    run(ctx, lambda m: m.show_token(token_id), as_json=as_json)


USAGE_FIELDS = (
    "id",
    "project_id",
    "state",
    "request_count",
    "max_requests",
    "remaining_requests",
    "cache_hit_count",
    "prompt_tokens",
    "completion_tokens",
    "last_used_at",
)


@app.command("usage")
def usage(
    ctx: typer.Context,
    token_id: TokenIdArg,
    limit: EventPageOpt = 20,
    before_event_id: BeforeEventOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A token's usage totals and its latest requests, newest first."""
    run(
        ctx,
        lambda m: m.token_usage(token_id, before_event_id=before_event_id, limit=limit),
        as_json=as_json,
        render=lambda result, js: emit_usage(result, js, "token", USAGE_FIELDS),
    )


@app.command("update")
def update(
    ctx: typer.Context,
    token_id: TokenIdArg,
    activate: Annotated[
        bool | None,
        typer.Option("--activate/--deactivate", help="Reactivate (also un-revokes) or disable."),
    ] = None,
    max_requests: MaxRequestsOpt = None,
    unlimited: Annotated[
        bool, typer.Option("--unlimited", help="Remove the request limit.")
    ] = False,
    duration: Annotated[
        str | None, typer.Option("--duration", help="New lifetime from now (24, 30m, 7d, never).")
    ] = None,
    label: Annotated[str | None, typer.Option("--label", help="New label.")] = None,
    rpm: RpmOpt = None,
    max_concurrency: MaxConcurrencyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Reactivate a token, or change its limits, expiry or label."""
    if unlimited and max_requests is not None:
        fail("give --max-requests or --unlimited, not both", 2)
    run(
        ctx,
        lambda m: m.update_token(
            token_id,
            activate=activate,
            max_requests=max_requests,
            unlimited=unlimited,
            duration=duration,
            label=label,
            rpm=rpm,
            max_concurrency=max_concurrency,
        ),
        as_json=as_json,
    )


@app.command("revoke")
def revoke(
    ctx: typer.Context,
    token_id: Annotated[str | None, typer.Argument(help="The token's id.")] = None,
    project_id: Annotated[
        str | None, typer.Option("--project-id", help="Revoke every token of this project.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke one token, or all of a project's tokens with --project-id."""
    if (token_id is None) == (project_id is None):
        fail("give a TOKEN_ID or --project-id (exactly one)", 2)
    if project_id is not None:
        run(ctx, lambda m: m.revoke_project_tokens(project_id), as_json=as_json)
    else:
        assert token_id is not None
        run(ctx, lambda m: m.revoke_token(token_id), as_json=as_json)
