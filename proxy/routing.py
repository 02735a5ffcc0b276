"""Which requests may be forwarded: raw-path validation and the endpoint/method allowlists."""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from shared.deployments import DEPLOYMENT_NAME
from shared.errors import MethodNotAllowed, RouteNotFound, UserError

# Characters a path segment may hold (RFC 3986 pchar, minus '%' which is checked separately).
_PATH_CHARS = re.compile(rb"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")
# Percent-escapes that could change how the upstream splits or normalises the path:
# '.', '/', '\', NUL and other control characters.
_BAD_ESCAPE = re.compile(rb"%(?:2[eEfF]|5[cC]|[01][0-9a-fA-F]|7[fF])")
_AZURE_PREFIX = b"/openai/deployments/"
_DEPLOYMENT = re.compile(DEPLOYMENT_NAME.encode())
_QUERY_CHARS = re.compile(rb"[A-Za-z0-9\-._~!$&'()*+,;=:@/?%\[\]|^`{}\"<>]*")

#: Query parameters that carry a credential in one API or another. A client token sent this
#: way would reach the upstream (and every access log on the way): refused, never forwarded.
CREDENTIAL_PARAMS = frozenset(
    {
        "api_key",
        "api-key",
        "apikey",
        "x-api-key",
        "key",
        "access_token",
        "token",
        "auth",
        "authorization",
    }
)


_KNOWN_ROUTES = 1024


@dataclass(frozen=True, slots=True)
class Route:
    """A request that may be forwarded: the path below ``/v1`` and the endpoint it matched."""

    rest: str  # e.g. "/chat/completions", appended to the project's base URL
    endpoint: str  # the allowlisted prefix, e.g. "/v1/chat/completions" (a bounded metric label)
    deployment: str = ""  # named in an Azure-shaped path (/openai/deployments/{name}/...)


class Router:
    def __init__(self, endpoints: tuple[str, ...], methods: tuple[str, ...]) -> None:
        self.endpoints = tuple(sorted(endpoints, key=len, reverse=True))
        self.methods = frozenset(methods)
        # (method, raw path) -> its route, for targets without a query: the few paths clients
        # send again and again are checked once (bounded, so invented paths cannot grow it)
        self._known: dict[tuple[str, bytes], Route] = {}

    def match(self, method: str, raw_path: bytes, query: bytes) -> Route:
        """Validate the raw request target and the method; raise 404/405 before any I/O.
        An Azure-shaped path (``/openai/deployments/{name}/chat/completions``, as the openai
        SDK's ``AzureOpenAI`` client sends) is matched as the ``/v1`` path it stands for."""
        if query:
            return self._match(method, raw_path, query)
        key = (method, raw_path)
        route = self._known.get(key)
        if route is None:
            route = self._match(method, raw_path, query)
            if len(self._known) < _KNOWN_ROUTES:
                self._known[key] = route
        return route

    def _match(self, method: str, raw_path: bytes, query: bytes) -> Route:
        deployment = ""
        if raw_path.startswith(_AZURE_PREFIX):
            named, _, rest = raw_path[len(_AZURE_PREFIX) :].partition(b"/")
            if not _DEPLOYMENT.fullmatch(named) or not rest:
                raise RouteNotFound()
            deployment, raw_path = named.decode("ascii"), b"/v1/" + rest
        path = safe_path(raw_path)
        if path is None:
            raise RouteNotFound()
        if query:
            if not _QUERY_CHARS.fullmatch(query):
                raise RouteNotFound("Malformed query string.")
            name = query_credential(query)
            if name is not None:
                raise UserError(
                    f"Credentials go in the Authorization header, not the query string "
                    f"({name!r}); this request was not forwarded."
                )
        for endpoint in self.endpoints:
            if path == endpoint or path.startswith(endpoint + "/"):
                break
        else:
            raise RouteNotFound(f"Unknown endpoint {path}.")
        if method not in self.methods:
            raise MethodNotAllowed(f"Method {method} is not allowed for {endpoint}.")
        return Route(path[3:], endpoint, deployment)


def safe_path(raw_path: bytes) -> str | None:
    """The raw path as text if it is a plain ``/v1/...`` path that cannot step outside the
    upstream base URL: no dot segments, no empty segments, no escaped dots, slashes or
    backslashes, no control characters. ``None`` otherwise."""
    if not raw_path.startswith(b"/v1/") or len(raw_path) > 2048:
        return None
    if not _PATH_CHARS.fullmatch(raw_path) or _BAD_ESCAPE.search(raw_path):
        return None
    segments = raw_path[1:].split(b"/")
    for segment in segments[:-1]:
        if segment in (b"", b".", b".."):
            return None
    if segments[-1] in (b".", b".."):
        return None
    return raw_path.decode("ascii")


def query_credential(query: bytes) -> str | None:
    """The first credential parameter named in a raw query string (compared as urllib decodes
    names: percent-escapes and ``+``, any case), or None."""
    for part in query.split(b"&"):
        raw = part.partition(b"=")[0]
        if b"%" in raw or b"+" in raw:
            name = urllib.parse.unquote_plus(raw.decode("latin-1")).lower()
        else:
            name = raw.decode("latin-1").lower()
        if name in CREDENTIAL_PARAMS:
            return name
    return None
