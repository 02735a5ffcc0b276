"""The management API of a remote deployment, behind the same methods as ``shared.manage``."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import typer
from yarl import URL

from shared.errors import LLMProxyError, Unavailable, UserError
from shared.store import AuditFilter

View = dict[str, Any]
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


def _present(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _segment(value: str) -> str:
    return urllib.parse.quote(value, safe="")


class RemoteManagement:
    """Same async methods, arguments and return values as ``shared.manage.Management``, served
    by a deployment's management API; errors arrive as the same ``shared.errors`` classes."""

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
        params = {k: _query_value(v) for k, v in (query or {}).items() if v is not None}
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

    # --- projects ---

    async def create_project(self, name: str, base_url: str | None, api_key: str | None) -> View:
        body = _present(name=name, base_url=base_url, api_key=api_key)
        result: View = await self._call("POST", "/projects", body=body)
        return result

    async def list_projects(self) -> list[View]:
        result: list[View] = (await self._call("GET", "/projects"))["data"]
        return result

    async def show_project(self, project_id: str) -> View:
        result: View = await self._call("GET", f"/projects/{_segment(project_id)}")
        return result

    async def update_project(
        self,
        project_id: str,
        *,
        name: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
    ) -> View:
        body = _present(name=name, base_url=base_url, api_key=api_key)
        result: View = await self._call("PATCH", f"/projects/{_segment(project_id)}", body=body)
        return result

    async def set_project_active(
        self, project_id: str, active: bool, *, revoke_tokens: bool = False
    ) -> View:
        path = f"/projects/{_segment(project_id)}/" + ("activate" if active else "deactivate")
        body = {} if active else {"revoke_tokens": revoke_tokens}
        result: View = await self._call("POST", path, body=body)
        return result

    async def delete_project(self, project_id: str) -> View:
        result: View = await self._call("DELETE", f"/projects/{_segment(project_id)}")
        return result

    async def project_usage(
        self, project_id: str, *, before_event_id: str | None = None, limit: int = 20
    ) -> View:
        query = {"before_event_id": before_event_id, "limit": limit}
        path = f"/projects/{_segment(project_id)}/usage"
        result: View = await self._call("GET", path, query=query)
        return result

    # --- tokens ---

    async def generate_token(
        self,
        project_id: str,
        *,
        duration: str | None = "24",
        max_requests: int | None = None,
        label: str = "",
        rpm: int | None = None,
        max_concurrency: int | None = None,
    ) -> View:
        body = {
            "project_id": project_id,
            "duration": duration if duration is not None else "never",
            "max_requests": max_requests,
            "label": label,
            "rpm": rpm,
            "max_concurrency": max_concurrency,
        }
        result: View = await self._call("POST", "/tokens", body=body)
        return result

    async def list_tokens(self, project_id: str | None = None) -> list[View]:
        result: list[View] = (await self._call("GET", "/tokens", query={"project_id": project_id}))[
            "data"
        ]
        return result

    async def show_token(self, token_id: str) -> View:
        result: View = await self._call("GET", f"/tokens/{_segment(token_id)}")
        return result

    async def token_usage(
        self, token_id: str, *, before_event_id: str | None = None, limit: int = 20
    ) -> View:
        query = {"before_event_id": before_event_id, "limit": limit}
        path = f"/tokens/{_segment(token_id)}/usage"
        result: View = await self._call("GET", path, query=query)
        return result

    async def update_token(
        self,
        token_id: str,
        *,
        activate: bool | None = None,
        max_requests: int | None = None,
        unlimited: bool = False,
        duration: str | None = None,
        label: str | None = None,
        rpm: int | None = None,
        max_concurrency: int | None = None,
    ) -> View:
        body = _present(
            activate=activate,
            max_requests=max_requests,
            duration=duration,
            label=label,
            unlimited=unlimited or None,
            rpm=rpm,
            max_concurrency=max_concurrency,
        )
        result: View = await self._call("PATCH", f"/tokens/{_segment(token_id)}", body=body)
        return result

    async def revoke_token(self, token_id: str) -> View:
        result: View = await self._call("POST", f"/tokens/{_segment(token_id)}/revoke")
        return result

    async def revoke_project_tokens(self, project_id: str) -> View:
        path = f"/projects/{_segment(project_id)}/revoke-tokens"
        result: View = await self._call("POST", path)
        return result

    # --- keys and audit ---

    async def purge_cache(
        self, project_id: str | None = None, path_prefix: str | None = None
    ) -> View:
        body = {"project_id": project_id, "path_prefix": path_prefix}
        result: View = await self._call("POST", "/cache/purge", body=body)
        return result

    async def rotate_keys(self) -> View:
        result: View = await self._call("POST", "/keys/rotate")
        return result

    async def list_audit(self, flt: AuditFilter) -> list[View]:
        return list((await self.audit_page(flt))["data"])

    async def audit_page(self, flt: AuditFilter) -> View:
        query = {
            "action": flt.action,
            "target_id": flt.target_id,
            "outcome": flt.outcome,
            "since": flt.since,
            "until": flt.until,
            "before_id": flt.before_id,
            "limit": flt.limit,
        }
        result: View = await self._call("GET", "/audit", query=query)
        return result


def _query_value(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)
