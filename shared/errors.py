"""Errors raised by llm-proxy code, each carrying the HTTP status and code it renders as.

    LLMProxyError                       (500, internal_error)
    ├── ConfigError                     a setting is missing or malformed (start-up only)
    ├── UserError                       (400, invalid_request) bad input to a management action
    │   ├── NotFound                    (404, not_found)
    │   ├── Conflict                    (409, conflict)
    │   └── InvalidHeader               (400, invalid_header) a header that cannot be forwarded
    ├── AuthError                       (401, invalid_api_key) never says which check failed
    ├── ManagementAuthError             (401, invalid_management_token)
    ├── ManagementDisabled              (503, management_disabled)
    ├── PermissionDenied                (403, forbidden)
    ├── ModelNotAllowed                 (400, model_not_allowed) outside the model scope
    ├── RouteNotFound                   (404, not_found)
    ├── MethodNotAllowed                (405, method_not_allowed)
    ├── BodyTooLarge                    (413, request_too_large)
    ├── MalformedRequest                (400, invalid_request) HTTP the server cannot parse
    ├── HeadTimeout                     (408, request_timeout) request head not sent in time
    ├── HeadersTooLarge                 (431, request_headers_too_large)
    ├── RateLimited                     (429, rate_limit_exceeded) with Retry-After
    │   ├── QuotaExceeded               (429, quota_exceeded)
    │   ├── BudgetExceeded              (429, budget_exceeded) a hard budget is spent
    │   └── TpmExceeded                 (429, tpm_exceeded) tokens per minute
    ├── Overloaded                      (503, overloaded) with Retry-After
    ├── Unavailable                     (503, service_unavailable) a dependency is down
    ├── UpstreamError                   (502, upstream_error) connection refused/reset
    └── UpstreamTimeout                 (504, upstream_timeout)

One renderer (``error_body``) turns any of them into the OpenAI-style envelope
``{"error": {"message", "type", "code"}}``. Messages are safe to show a client: they never
contain a token, a key or an internal address.
"""

from __future__ import annotations


class LLMProxyError(Exception):
    status = 500
    code = "internal_error"
    type = "server_error"
    default_message = "Internal error."

    def __init__(
        self, message: str | None = None, *, headers: dict[str, str] | None = None
    ) -> None:
        self.message = message or self.default_message
        self.headers = headers or {}
        super().__init__(self.message)


class ConfigError(LLMProxyError):
    code = "config_error"
    default_message = "Invalid configuration."


class UserError(LLMProxyError):
    status = 400
    code = "invalid_request"
    type = "invalid_request_error"
    default_message = "Invalid request."


class NotFound(UserError):
    status = 404
    code = "not_found"
    default_message = "Not found."


class Conflict(UserError):
    status = 409
    code = "conflict"
    default_message = "Conflict."


class InvalidHeader(UserError):
    """A request header that cannot be forwarded (a name that is not a token, a value holding
    CR, LF or NUL): refused before anything is sent upstream."""

    code = "invalid_header"
    default_message = "A request header cannot be forwarded."


class AuthError(LLMProxyError):
    status = 401
    code = "invalid_api_key"
    type = "invalid_request_error"
    default_message = "Invalid or missing API key."


class ManagementAuthError(LLMProxyError):
    status = 401
    code = "invalid_management_token"
    type = "invalid_request_error"
    default_message = "Invalid or missing management token."


class ManagementDisabled(LLMProxyError):
    status = 503
    code = "management_disabled"
    type = "server_error"
    default_message = "The management API is disabled: set MANAGEMENT_TOKEN to enable it."


class PermissionDenied(LLMProxyError):
    status = 403
    code = "forbidden"
    type = "invalid_request_error"
    default_message = "Forbidden."


class RouteNotFound(LLMProxyError):
    status = 404
    code = "not_found"
    type = "invalid_request_error"
    default_message = "Unknown endpoint."


class MethodNotAllowed(LLMProxyError):
    status = 405
    code = "method_not_allowed"
    type = "invalid_request_error"
    default_message = "Method not allowed for this endpoint."


class ModelNotAllowed(LLMProxyError):
    status = 400
    code = "model_not_allowed"
    type = "invalid_request_error"
    default_message = "This token may not use that model."


class BodyTooLarge(LLMProxyError):
    status = 413
    code = "request_too_large"
    type = "invalid_request_error"
    default_message = "Request body too large."


class MalformedRequest(LLMProxyError):
    status = 400
    code = "invalid_request"
    type = "invalid_request_error"
    default_message = "Malformed HTTP request."


class HeadTimeout(LLMProxyError):
    status = 408
    code = "request_timeout"
    type = "invalid_request_error"
    default_message = "The request headers were not received in time."


class HeadersTooLarge(LLMProxyError):
    status = 431
    code = "request_headers_too_large"
    type = "invalid_request_error"
    default_message = "Request headers too large or too many."


class RateLimited(LLMProxyError):
    status = 429
    code = "rate_limit_exceeded"
    type = "rate_limit_error"
    default_message = "Rate limit exceeded."


class QuotaExceeded(RateLimited):
    code = "quota_exceeded"
    type = "insufficient_quota"
    default_message = "This token has used all of its allowed requests."


class BudgetExceeded(RateLimited):
    code = "budget_exceeded"
    type = "insufficient_quota"
    default_message = "This token's or project's budget is spent for now."


class TpmExceeded(RateLimited):
    code = "tpm_exceeded"
    type = "requests"
    default_message = "Too many tokens per minute for this token."


class Overloaded(LLMProxyError):
    status = 503
    code = "overloaded"
    type = "server_error"
    default_message = "The proxy is at capacity; retry shortly."


class Unavailable(LLMProxyError):
    status = 503
    code = "service_unavailable"
    type = "server_error"
    default_message = "A required service is unavailable."


class UpstreamError(LLMProxyError):
    status = 502
    code = "upstream_error"
    type = "server_error"
    default_message = "The upstream API could not be reached."


class UpstreamTimeout(LLMProxyError):
    status = 504
    code = "upstream_timeout"
    type = "server_error"
    default_message = "The upstream API did not answer in time."


def error_body(exc: LLMProxyError) -> dict[str, dict[str, str | None]]:
    """The OpenAI-style error envelope for ``exc``."""
    return {"error": {"message": exc.message, "type": exc.type, "code": exc.code, "param": None}}


#: Codes of the errors the proxy answers with *before* forwarding (authentication, routing, size,
#: limits, capacity). A request event carrying one of these was not admitted: it is kept in
#: request_events for audit but not added to the request_count / cache_hit_count aggregates,
#: which are what token quotas are seeded from.
REJECTION_CODES = frozenset(
    cls.code
    for cls in (
        UserError,
        InvalidHeader,
        AuthError,
        PermissionDenied,
        ModelNotAllowed,
        RouteNotFound,
        MethodNotAllowed,
        BodyTooLarge,
        RateLimited,
        QuotaExceeded,
        BudgetExceeded,
        TpmExceeded,
        Overloaded,
        Unavailable,
    )
)
