"""The table of management operations: each one's inputs, service method, endpoint and reply."""

from __future__ import annotations

from typing import Any

from shared.management.fields import Operation
from shared.management.inputs import (
    AddUpstream,
    AuditQuery,
    CreateProject,
    DeactivateProject,
    DeadLetterQuery,
    GenerateToken,
    ImportPrices,
    ListPrices,
    ListTokens,
    ListUpstreams,
    NoInput,
    ProjectRef,
    ProjectUsage,
    PurgeCache,
    RequeueDeadLetters,
    RotateToken,
    SetPrice,
    TailEvents,
    TokenRef,
    TokenUsage,
    UnpricedQuery,
    UpdateProject,
    UpdateToken,
    UpdateUpstream,
    UpstreamRef,
    UsageQuery,
)

# --- projects ---
LIST_PROJECTS = Operation(
    "project list",
    "list_projects",
    NoInput,
    "GET",
    "/projects",
    "listProjects",
    "List projects.",
    "ProjectList",
)
CREATE_PROJECT = Operation(
    "project create",
    "create_project",
    CreateProject,
    "POST",
    "/projects",
    "createProject",
    "Create a project; prints its id.",
    "Project",
    status=201,
)
SHOW_PROJECT = Operation(
    "project show",
    "show_project",
    ProjectRef,
    "GET",
    "/projects/{project_id}",
    "getProject",
    "Show a project: its usage totals, upstreams, and its budget's spend and what is left.",
    "ProjectDetail",
)
UPDATE_PROJECT = Operation(
    "project update",
    "update_project",
    UpdateProject,
    "PATCH",
    "/projects/{project_id}",
    "updateProject",
    "Change a project's name, base URL or upstream key.",
    "Project",
)
DELETE_PROJECT = Operation(
    "project delete",
    "delete_project",
    ProjectRef,
    "DELETE",
    "/projects/{project_id}",
    "deleteProject",
    "Delete a project and its tokens (request history is kept).",
    "ProjectDeleted",
    destructive=True,
)
ACTIVATE_PROJECT = Operation(
    "project activate",
    "activate_project",
    ProjectRef,
    "POST",
    "/projects/{project_id}/activate",
    "activateProject",
    "Let a project's tokens be used again.",
    "ProjectActivation",
)
DEACTIVATE_PROJECT = Operation(
    "project deactivate",
    "deactivate_project",
    DeactivateProject,
    "POST",
    "/projects/{project_id}/deactivate",
    "deactivateProject",
    "Stop all traffic of a project at once.",
    "ProjectActivation",
)
REVOKE_PROJECT_TOKENS = Operation(
    "",  # part of `token revoke`
    "revoke_project_tokens",
    ProjectRef,
    "POST",
    "/projects/{project_id}/revoke-tokens",
    "revokeProjectTokens",
    "Revoke every token of a project, in one transaction.",
    "ProjectTokensRevoked",
)
PROJECT_USAGE = Operation(
    "project usage",
    "project_usage",
    ProjectUsage,
    "GET",
    "/projects/{project_id}/usage",
    "getProjectUsage",
    "A project's usage totals and its latest requests, newest first.",
    "ProjectUsage",
)

# --- a project's several upstreams ---
ADD_UPSTREAM = Operation(
    "project upstream add",
    "add_upstream",
    AddUpstream,
    "POST",
    "/upstreams",
    "addUpstream",
    "Add an upstream to a project (its key stored encrypted); prints its id.",
    "Upstream",
    status=201,
    description="Once a project has upstreams, they serve its requests instead of its own base "
    "URL and key: by weight within a priority, failing over to the next priority "
    "(docs/providers.md).",
)
LIST_UPSTREAMS = Operation(
    "project upstream list",
    "list_upstreams",
    ListUpstreams,
    "GET",
    "/upstreams",
    "listUpstreams",
    "List a project's upstreams (keys are never shown).",
    "UpstreamList",
)
UPDATE_UPSTREAM = Operation(
    "project upstream update",
    "update_upstream",
    UpdateUpstream,
    "PATCH",
    "/upstreams/{upstream_id}",
    "updateUpstream",
    "Change an upstream's base URL, key, kind, weight or priority, or take it out of rotation.",
    "Upstream",
)
REMOVE_UPSTREAM = Operation(
    "project upstream remove",
    "remove_upstream",
    UpstreamRef,
    "DELETE",
    "/upstreams/{upstream_id}",
    "removeUpstream",
    "Remove an upstream from its project.",
    "UpstreamRemoved",
    destructive=True,
)

# --- tokens ---
LIST_TOKENS = Operation(
    "token list",
    "list_tokens",
    ListTokens,
    "GET",
    "/tokens",
    "listTokens",
    "List tokens (masked) with usage, expiry and state.",
    "TokenList",
)
GENERATE_TOKEN = Operation(
    "token generate",
    "generate_token",
    GenerateToken,
    "POST",
    "/tokens",
    "generateToken",
    "Issue a token. It is printed in full this once; store it safely.",
    "NewToken",
    status=201,
)
SHOW_TOKEN = Operation(
    "token show",
    "show_token",
    TokenRef,
    "GET",
    "/tokens/{token_id}",
    "getToken",
    "Show a token: its usage, remaining quota, and its budget's spend and what is left.",
    "TokenDetail",
)
UPDATE_TOKEN = Operation(
    "token update",
    "update_token",
    UpdateToken,
    "PATCH",
    "/tokens/{token_id}",
    "updateToken",
    "Reactivate a token, or change its limits, expiry or label.",
    "Token",
)
REVOKE_TOKEN = Operation(
    "",  # part of `token revoke`
    "revoke_token",
    TokenRef,
    "POST",
    "/tokens/{token_id}/revoke",
    "revokeToken",
    "Revoke a token.",
    "RevokedToken",
)
ROTATE_TOKEN = Operation(
    "token rotate",
    "rotate_token",
    RotateToken,
    "POST",
    "/tokens/{token_id}/rotate",
    "rotateToken",
    "Replace a token: the new one works at once and is shown this once; the old one keeps "
    "working until the grace period ends.",
    "RotatedToken",
    status=201,
)
TOKEN_USAGE = Operation(
    "token usage",
    "token_usage",
    TokenUsage,
    "GET",
    "/tokens/{token_id}/usage",
    "getTokenUsage",
    "A token's usage totals and its latest requests, newest first.",
    "TokenUsage",
)

# --- response cache, keys, audit ---
PURGE_CACHE = Operation(
    "cache purge",
    "purge_cache",
    PurgeCache,
    "POST",
    "/cache/purge",
    "purgeCache",
    "Remove cached responses: all of them, one project's, or those under a path prefix.",
    "CachePurged",
    description="With HTTP_CACHE_BACKEND=redis the entries every instance shares are removed at "
    "once (POST and Vary-keyed entries included). With the in-memory backend every running worker "
    "is told to purge its own cache, which it does within a second.",
)
ROTATE_KEYS = Operation(
    "keys rotate",
    "rotate_keys",
    NoInput,
    "POST",
    "/keys/rotate",
    "rotateKeys",
    "Re-encrypt every stored upstream key with ENCRYPTION_KEY.",
    "KeysRotated",
    description="Set the new key as ENCRYPTION_KEY and the old one in ENCRYPTION_OLD_KEYS, run "
    "this, then drop the old key once every process runs with the new settings. With --api-url "
    "the remote server re-encrypts with its own ENCRYPTION_KEY and ENCRYPTION_OLD_KEYS.",
)
LIST_AUDIT = Operation(
    "audit list",
    "audit_page",
    AuditQuery,
    "GET",
    "/audit",
    "listAudit",
    "The audit log, newest first, a page at a time.",
    "AuditPage",
)

# --- the event pipeline ---
TAIL_EVENTS = Operation(
    "events tail",
    "tail_events",
    TailEvents,
    "GET",
    "/events",
    "tailEvents",
    "The latest recorded request events, oldest first.",
    "EventTail",
)
EVENT_STATS = Operation(
    "events stats",
    "event_stats",
    NoInput,
    "GET",
    "/events/stats",
    "getEventStats",
    "Counts of recorded events, dead letters and the stream's backlog.",
    "EventStats",
    description="With LLM_PROXY_EVENT_BUS=redis-streams: the stream's length and, per consumer "
    "group, pending entries, lag and consumers.",
)
DEAD_LETTERS = Operation(
    "events dead-letters",
    "dead_letters",
    DeadLetterQuery,
    "GET",
    "/events/dead-letters",
    "listDeadLetters",
    "Stream entries the dispatchers could not record, oldest first, with the error.",
    "DeadLetterList",
)
REQUEUE_DEAD_LETTERS = Operation(
    "",  # what `events replay-dead-letters` does with --api-url
    "requeue_dead_letters",
    RequeueDeadLetters,
    "POST",
    "/events/dead-letters/requeue",
    "requeueDeadLetters",
    "Hand dead letters back to the event stream, for the dispatchers to record.",
    "DeadLettersRequeued",
    description="Each is marked replayed and added to the stream again; the dispatchers apply "
    "every check they apply to new entries, so one still not storable becomes a dead letter "
    "again. Needs LLM_PROXY_EVENT_BUS=redis-streams on the deployment.",
)

OPERATIONS: tuple[Operation[Any], ...] = (
    LIST_PROJECTS,
    CREATE_PROJECT,
    SHOW_PROJECT,
    UPDATE_PROJECT,
    DELETE_PROJECT,
    ACTIVATE_PROJECT,
    DEACTIVATE_PROJECT,
    REVOKE_PROJECT_TOKENS,
    PROJECT_USAGE,
    ADD_UPSTREAM,
    LIST_UPSTREAMS,
    UPDATE_UPSTREAM,
    REMOVE_UPSTREAM,
    LIST_TOKENS,
    GENERATE_TOKEN,
    SHOW_TOKEN,
    UPDATE_TOKEN,
    REVOKE_TOKEN,
    ROTATE_TOKEN,
    TOKEN_USAGE,
    PURGE_CACHE,
    ROTATE_KEYS,
    LIST_AUDIT,
    TAIL_EVENTS,
    EVENT_STATS,
    DEAD_LETTERS,
    REQUEUE_DEAD_LETTERS,
)

# --- money ---
LIST_PRICES = Operation(
    "prices list",
    "list_prices",
    ListPrices,
    "GET",
    "/prices",
    "listPrices",
    "The operator's price rows (with --shipped, the package's too).",
    "PriceList",
)
SET_PRICE = Operation(
    "prices set",
    "set_price",
    SetPrice,
    "PUT",
    "/prices/models/{model}",
    "setPrice",
    "Add a price row for a model (or replace the one with the same project and start).",
    "Price",
    description="Rates are dollars per million tokens, given as text so that no digit is lost "
    "(at most six decimal places). Events written from now on are costed with it when their "
    "time is at or after --effective-from.",
)
IMPORT_PRICES = Operation(
    "prices import",
    "import_prices",
    ImportPrices,
    "POST",
    "/prices/import",
    "importPrices",
    "Add or replace price rows from a file `prices export` wrote: all of them, or none.",
    "PricesImported",
)
EXPORT_PRICES = Operation(
    "prices export",
    "export_prices",
    NoInput,
    "GET",
    "/prices/export",
    "exportPrices",
    "Every price row in force, shipped and the operator's, in the form `prices import` reads.",
    "PriceExport",
)
UNPRICED_MODELS = Operation(
    "prices unpriced",
    "unpriced_models",
    UnpricedQuery,
    "GET",
    "/prices/unpriced",
    "listUnpriced",
    "Models that were requested without a price: their cost is unknown (never counted as $0).",
    "UnpricedList",
)
USAGE_REPORT = Operation(
    "usage",
    "usage_report",
    UsageQuery,
    "GET",
    "/usage",
    "getUsage",
    "A project's or a token's requests, tokens and cost, per model, day or token.",
    "UsageReport",
    description="Read from the daily rollups (exact; no raw events scanned). cost_usd sums the "
    "priced requests; unpriced counts those whose model had no price.",
)

OPERATIONS += (
    LIST_PRICES,
    SET_PRICE,
    IMPORT_PRICES,
    EXPORT_PRICES,
    UNPRICED_MODELS,
    USAGE_REPORT,
)
