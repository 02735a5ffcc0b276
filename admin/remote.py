"""The management API of a remote deployment, behind the same ``call`` as ``shared.management``."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import typer
from yarl import URL

from shared.errors import LLMProxyError, Unavailable, UserError
from shared.management import Operation
from shared.management.fields import refuse_nul

I = TypeVar("I")  # noqa: E741
TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=10)


@dataclass(frozen=True, slots=True)
class RemoteTarget:
    """Where ``llm-proxy manage --api-url`` sends its commands."""

    api_url: str
    token: str


def chosen_target(ctx: typer.Context) -> RemoteTarget | None:
    """The remote target ``llm-proxy manage --api-url`` chose for this command, if any."""
    target: RemoteTarget | None = ctx.find_object(RemoteTarget)
    return target


def management_url(api_url: str) -> str:
    """The ``/manage`` base of a deployment, from its address with or without ``/manage``."""
    url = api_url.strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(
            f"--api-url must be an http(s) URL such as https://proxy.example.com, got {url!r}"
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise UserError("--api-url must not contain credentials, a query or a fragment")
    return url if url.endswith("/manage") else url + "/manage"


def _errors_by_status_and_code() -> dict[tuple[int, str], type[LLMProxyError]]:
    found: dict[tuple[int, str], type[LLMProxyError]] = {}

    def walk(cls: type[LLMProxyError]) -> None:
        found.setdefault((cls.status, cls.code), cls)  # depth first: NotFound before RouteNotFound
        for sub in cls.__subclasses__():
            walk(sub)

    walk(LLMProxyError)
    return found


_ERRORS = _errors_by_status_and_code()


def error_from_reply(status: int, payload: Any, where: str) -> LLMProxyError:
    """The ``shared.errors`` exception an error envelope stands for."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("code"), str):
        return LLMProxyError(
            f"{where} did not answer like an llm-proxy management API (HTTP {status})"
        )
    cls = _ERRORS.get((status, error["code"]), LLMProxyError)
    message = error.get("message")
    return cls(message if isinstance(message, str) and message else None)


def _segment(value: str) -> str:
    return urllib.parse.quote(value, safe="") or "%20"  # an empty id still names a (missing) one


class RemoteManagement:
    """``Management.call`` served by a deployment's management API: each request is encoded from
    the operation's declaration; errors arrive as the same ``shared.errors`` classes."""

    def __init__(self, session: aiohttp.ClientSession, target: RemoteTarget) -> None:
        self._session = session
        self._base = management_url(target.api_url)
        self._headers = {"Authorization": f"Bearer {target.token}", "Accept": "application/json"}
        if not target.token:
            raise UserError(
                "--api-url needs the deployment's management token: set MANAGEMENT_TOKEN "
                "or pass --management-token"
            )

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
    ) -> Any:
        url = URL(self._base + path, encoded=True)  # ids were quoted already: no re-quoting
        params = query or {}
        origin = self._base.rsplit("/manage", 1)[0]
        try:
            async with self._session.request(
                method, url, json=body, params=params or None, headers=self._headers
            ) as resp:
                try:
                    payload = await resp.json(content_type=None)
                except ValueError:
                    payload = None
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            reason = str(exc) or type(exc).__name__
            raise Unavailable(f"cannot reach the management API at {origin}: {reason}") from None
        if status >= 400 or payload is None:
            raise error_from_reply(status, payload, origin)
        return payload

    async def call(self, op: Operation[I], inp: I) -> Any:
        """Run one operation on the deployment: the same inputs and reply as ``Management``."""
        refuse_nul(inp)  # the server would refuse it too; this names the field without a trip
        path = op.path
        for f in op.located("path"):
            path = path.replace("{" + f.name + "}", _segment(getattr(inp, f.name)))
        query = {
            f.name: f.encode(v, "query")
            for f in op.located("query")
            if (v := getattr(inp, f.name)) is not None
        }
        body = {
            f.name: f.encode(v, "body")
            for f in op.located("body")
            if (v := getattr(inp, f.name)) is not None
        }
        return await self._call(op.method, path, body=body if op.takes_body else None, query=query)
