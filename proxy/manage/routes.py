"""The management API's one route table: each endpoint's inputs, its Management call, its reply."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from proxy.manage.fields import Field
from shared.manage import DEFAULT_BASE_URL, MAX_PAGE, Management
from shared.store import AuditFilter


@dataclass(frozen=True, slots=True)
class Call:
    """The parsed inputs of one request."""

    path: Mapping[str, str]
    body: dict[str, Any]
    query: dict[str, Any]


Handler = Callable[[Management, Call], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str  # relative to the mount point, Starlette syntax: /projects/{project_id}
    operation: str  # OpenAPI operationId
    summary: str
    handler: Handler
    response: str  # name of a schema in proxy.manage.schemas
    body: tuple[Field, ...] | None = None  # None: the endpoint takes no body
    query: tuple[Field, ...] = ()
    status: int = 200

    @property
    def path_params(self) -> list[str]:
        return [part[1:-1] for part in self.path.split("/") if part.startswith("{")]


# --- shared field declarations ---

_NAME = Field("name", "string", "Unique project name (1-200 printable characters).")
_BASE_URL = Field("base_url", "string", "Upstream base URL, as an OpenAI SDK's base_url.")
_API_KEY = Field(
    "api_key",
    "string",
    "The project's upstream API key. Stored encrypted; never returned.",
)
# Ranges that Management checks are left to it, so the CLI and the API say the same thing.
_MAX_REQUESTS = Field(
    "max_requests",
    "integer",
    "Requests allowed in the token's lifetime (a positive integer); null for no limit.",
    nullable=True,
)
_RPM = Field(
    "rpm",
    "integer",
    "Requests per minute for this token; 0 for none; null for the deployment's default.",
    nullable=True,
)
_MAX_CONCURRENCY = Field(
    "max_concurrency",
    "integer",
    "Requests this token may have in flight at once; 0 or null for no cap.",
    nullable=True,
)
_LIMIT = Field("limit", "integer", "Page size.", default=20, minimum=1, maximum=MAX_PAGE)
_BEFORE_EVENT = Field(
    "before_event_id",
    "string",
    "Cursor: the next_before_event_id of the previous page.",
)


# --- handlers: parse nothing, decide nothing; Management validates, audits and renders ---


async def _list_projects(m: Management, c: Call) -> Any:
    return {"data": await m.list_projects()}


async def _create_project(m: Management, c: Call) -> Any:
    return await m.create_project(c.body["name"], c.body.get("base_url"), c.body["api_key"])


async def _show_project(m: Management, c: Call) -> Any:
    return await m.show_project(c.path["project_id"])


async def _update_project(m: Management, c: Call) -> Any:
    return await m.update_project(
        c.path["project_id"],
        name=c.body.get("name"),
        base_url=c.body.get("base_url"),
        api_key=c.body.get("api_key"),
    )


async def _delete_project(m: Management, c: Call) -> Any:
    return await m.delete_project(c.path["project_id"])


async def _activate_project(m: Management, c: Call) -> Any:
    return await m.set_project_active(c.path["project_id"], True)


async def _deactivate_project(m: Management, c: Call) -> Any:
    return await m.set_project_active(
        c.path["project_id"], False, revoke_tokens=c.body["revoke_tokens"]
    )


async def _revoke_project_tokens(m: Management, c: Call) -> Any:
    return await m.revoke_project_tokens(c.path["project_id"])


async def _project_usage(m: Management, c: Call) -> Any:
    return await m.project_usage(
        c.path["project_id"],
        before_event_id=c.query.get("before_event_id"),
        limit=c.query["limit"],
    )


async def _purge_cache(m: Management, c: Call) -> Any:
    return await m.purge_cache(c.body.get("project_id"), c.body.get("path_prefix"))


async def _list_tokens(m: Management, c: Call) -> Any:
    return {"data": await m.list_tokens(c.query.get("project_id"))}


async def _generate_token(m: Management, c: Call) -> Any:
    return await m.generate_token(
        c.body["project_id"],
        duration=c.body["duration"],
        max_requests=c.body.get("max_requests"),
        label=c.body["label"],
        rpm=c.body.get("rpm"),
        max_concurrency=c.body.get("max_concurrency"),
    )


async def _show_token(m: Management, c: Call) -> Any:
    return await m.show_token(c.path["token_id"])


async def _update_token(m: Management, c: Call) -> Any:
    return await m.update_token(
        c.path["token_id"],
        activate=c.body.get("activate"),
        max_requests=c.body.get("max_requests"),
        unlimited=c.body["unlimited"],
        duration=c.body.get("duration"),
        label=c.body.get("label"),
        rpm=c.body.get("rpm"),
        max_concurrency=c.body.get("max_concurrency"),
    )


async def _revoke_token(m: Management, c: Call) -> Any:
    return await m.revoke_token(c.path["token_id"])


async def _token_usage(m: Management, c: Call) -> Any:
    return await m.token_usage(
        c.path["token_id"],
        before_event_id=c.query.get("before_event_id"),
        limit=c.query["limit"],
    )


async def _rotate_keys(m: Management, c: Call) -> Any:
    return await m.rotate_keys()


async def _list_audit(m: Management, c: Call) -> Any:
    return await m.audit_page(AuditFilter(**c.query))


ENDPOINTS: tuple[Endpoint, ...] = (
    # --- projects ---
    Endpoint("GET", "/projects", "listProjects", "List projects.", _list_projects, "ProjectList"),
    Endpoint(
        "POST",
        "/projects",
        "createProject",
        "Create a project.",
        _create_project,
        "Project",
        body=(
            replace(_NAME, required=True),
            replace(_BASE_URL, default=DEFAULT_BASE_URL),
            replace(_API_KEY, required=True, missing="an upstream API key is required (api_key)"),
        ),
        status=201,
    ),
    Endpoint(
        "GET",
        "/projects/{project_id}",
        "getProject",
        "Show a project with its usage totals.",
        _show_project,
        "Project",
    ),
    Endpoint(
        "PATCH",
        "/projects/{project_id}",
        "updateProject",
        "Change a project's name, base URL or upstream key.",
        _update_project,
        "Project",
        body=(_NAME, _BASE_URL, _API_KEY),
    ),
    Endpoint(
        "DELETE",
        "/projects/{project_id}",
        "deleteProject",
        "Delete a project and its tokens (request history is kept).",
        _delete_project,
        "ProjectDeleted",
    ),
    Endpoint(
        "POST",
        "/projects/{project_id}/activate",
        "activateProject",
        "Let a project's tokens be used again.",
        _activate_project,
        "ProjectActivation",
        body=(),
    ),
    Endpoint(
        "POST",
        "/projects/{project_id}/deactivate",
        "deactivateProject",
        "Stop all traffic of a project at once.",
        _deactivate_project,
        "ProjectActivation",
        body=(
            Field(
                "revoke_tokens",
                "boolean",
                "Also revoke every token of the project.",
                default=False,
            ),
        ),
    ),
    Endpoint(
        "POST",
        "/projects/{project_id}/revoke-tokens",
        "revokeProjectTokens",
        "Revoke every token of a project, in one transaction.",
        _revoke_project_tokens,
        "ProjectTokensRevoked",
        body=(),
    ),
    Endpoint(
        "GET",
        "/projects/{project_id}/usage",
        "getProjectUsage",
        "A project's usage totals and its request events, newest first.",
        _project_usage,
        "ProjectUsage",
        query=(_LIMIT, _BEFORE_EVENT),
    ),
    # --- tokens ---
    Endpoint(
        "GET",
        "/tokens",
        "listTokens",
        "List tokens (masked) with usage, expiry and state.",
        _list_tokens,
        "TokenList",
        query=(Field("project_id", "string", "Only this project's tokens."),),
    ),
    Endpoint(
        "POST",
        "/tokens",
        "generateToken",
        "Issue a token. The reply holds it in full, this once.",
        _generate_token,
        "NewToken",
        body=(
            Field("project_id", "string", "The project to issue for.", required=True),
            Field(
                "duration",
                "duration",
                "Lifetime: hours (24), or with a unit (30m, 24h, 7d); 'never' for no expiry.",
                default="24",
            ),
            _MAX_REQUESTS,
            Field("label", "string", "A note to recognise the token by.", default=""),
            _RPM,
            _MAX_CONCURRENCY,
        ),
        status=201,
    ),
    Endpoint(
        "GET",
        "/tokens/{token_id}",
        "getToken",
        "Show a token with its usage and remaining quota.",
        _show_token,
        "Token",
    ),
    Endpoint(
        "PATCH",
        "/tokens/{token_id}",
        "updateToken",
        "Reactivate a token, or change its limit, expiry or label.",
        _update_token,
        "Token",
        body=(
            Field(
                "activate",
                "boolean",
                "true reactivates (also un-revokes), false disables.",
                nullable=True,
            ),
            replace(_MAX_REQUESTS, nullable=False, doc="New request limit (a positive integer)."),
            Field("unlimited", "boolean", "Remove the request limit.", default=False),
            Field("duration", "duration", "New lifetime from now (24, 30m, 7d, never)."),
            Field("label", "string", "New label."),
            replace(_RPM, nullable=False, doc="New requests per minute (0 for none)."),
            replace(_MAX_CONCURRENCY, nullable=False, doc="New concurrency cap (0 for none)."),
        ),
    ),
    Endpoint(
        "POST",
        "/tokens/{token_id}/revoke",
        "revokeToken",
        "Revoke a token.",
        _revoke_token,
        "RevokedToken",
        body=(),
    ),
    Endpoint(
        "GET",
        "/tokens/{token_id}/usage",
        "getTokenUsage",
        "A token's usage totals and its request events, newest first.",
        _token_usage,
        "TokenUsage",
        query=(_LIMIT, _BEFORE_EVENT),
    ),
    # --- response cache ---
    Endpoint(
        "POST",
        "/cache/purge",
        "purgeCache",
        "Remove cached responses: all, one project's, or those under a path prefix. A shared "
        "(Redis) cache is purged at once; every worker's in-memory cache within a second.",
        _purge_cache,
        "CachePurged",
        body=(
            Field("project_id", "string", "Only this project's entries.", nullable=True),
            Field(
                "path_prefix",
                "string",
                "Only entries whose path starts with this (/v1/models).",
                nullable=True,
            ),
        ),
    ),
    # --- keys and audit ---
    Endpoint(
        "POST",
        "/keys/rotate",
        "rotateKeys",
        "Re-encrypt every stored upstream key with this server's ENCRYPTION_KEY.",
        _rotate_keys,
        "KeysRotated",
        body=(),
    ),
    Endpoint(
        "GET",
        "/audit",
        "listAudit",
        "The audit log, newest first.",
        _list_audit,
        "AuditPage",
        query=(
            Field("action", "string", "Only this action, e.g. token.revoke."),
            Field("target_id", "string", "Only entries about this project or token id."),
            Field("outcome", "string", "Only this outcome.", choices=("success", "failure")),
            Field("since", "date-time", "Entries at or after this time."),
            Field("until", "date-time", "Entries before this time."),
            Field(
                "before_id",
                "integer",
                "Cursor: the next_before_id of the previous page.",
                minimum=1,
            ),
            replace(_LIMIT, default=100),
        ),
    ),
)
