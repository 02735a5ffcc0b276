"""The console's pages: each reads or acts through ``Actions`` and renders one template."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from proxy.console.actions import Actions
from proxy.console.forms import form_of
from proxy.console.live import LiveFigures
from proxy.console.session import Session
from proxy.profiling import PHASES
from shared.errors import LLMProxyError, UserError
from shared.store import AuditFilter
from shared.streams import shard_keys, stream_stats

if TYPE_CHECKING:
    from proxy.console.app import Console

AUDIT_PAGE = 50
RECENT_EVENTS = 1000  # a project's latest requests, grouped by model and day on the usage page
PREFIX = "/console"  # where the proxy mounts the console


def _text(form: Any, name: str) -> str | None:
    """A form field, stripped; None when absent or empty (the service's "unchanged")."""
    value = form.get(name)
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip()


def _number(form: Any, name: str) -> int | None:
    value = _text(form, name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{name.replace('_', ' ')} must be a whole number, got {value!r}") from None


class Pages:
    def __init__(self, console: Console, live: LiveFigures) -> None:
        self.console = console
        self.live = live

    def _render(
        self, request: Request, template: str, session: Session, status: int = 200, **ctx: Any
    ) -> Response:
        return self.console.render(request, template, session, status=status, **ctx)

    # --- overview ---

    async def _figures(self, actions: Actions) -> dict[str, Any]:
        history = await self.live.history()
        latest = history[-1] if history else None
        seconds = self.console.settings.metrics_aggregation_interval_ms / 1000
        return {
            "latest": asdict(latest) if latest else None,
            "window_requests": round(sum(p.rps for p in history) * seconds),
            "dead_letters": await actions.dead_letters(),
            "stream_lag": await self._stream_lag(),
            "spool_bytes": _spool_bytes(self.console.settings.spool_dir),
            "where": self.live.where,
            "interval_ms": self.console.settings.metrics_aggregation_interval_ms,
            "retention_ms": self.console.settings.metrics_retention_ms,
        }

    async def _stream_lag(self) -> int | None:
        """Entries of the event stream the dispatchers have not read yet, summed over its
        shards (Redis bus only); unknown if any shard cannot tell."""
        settings = self.console.settings
        if settings.event_bus != "redis-streams" or self.live.redis is None:
            return None
        total = 0
        for key in shard_keys(settings.redis_stream_key, settings.redis_stream_shards):
            try:
                stats = await stream_stats(self.live.redis, key)
            except Exception:  # Redis away: the tile says "unknown"
                return None
            lag = next(
                (g.lag for g in stats.groups if g.name == settings.redis_consumer_group), None
            )
            if lag is None:  # no stream or group yet, or Redis cannot compute it
                return None
            total += lag
        return total
        try:
            groups = await self.live.redis.xinfo_groups(settings.redis_stream_key)
        except Exception:  # no stream yet, or Redis away: the tile says "unknown"
            return None
        for group in groups:
            name = group.get("name", b"")
            if (
                name.decode() if isinstance(name, bytes) else name
            ) == settings.redis_consumer_group:
                lag = group.get("lag")
                return int(lag) if lag is not None else None
        return None

    async def overview(self, request: Request, actions: Actions, session: Session) -> Response:
        return self._render(request, "overview.html", session, **await self._figures(actions))

    async def tiles(self, request: Request, actions: Actions, session: Session) -> Response:
        return self._render(request, "_tiles.html", session, **await self._figures(actions))

    async def live_json(self, request: Request, actions: Actions, session: Session) -> Response:
        figures = await self._figures(actions)
        figures["history"] = [asdict(p) for p in await self.live.history()]
        return JSONResponse(figures)

    # --- projects ---

    async def projects(
        self, request: Request, actions: Actions, session: Session, **ctx: Any
    ) -> Response:
        status = ctx.pop("status", 200)
        projects = await actions.list_projects()
        return self._render(request, "projects.html", session, status, projects=projects, **ctx)

    async def create_project(
        self, request: Request, actions: Actions, session: Session
    ) -> Response:
        form = await form_of(request)
        try:
            created = await actions.create_project(
                _text(form, "name") or "", _text(form, "base_url"), _text(form, "api_key") or ""
            )
        except LLMProxyError as exc:
            return await self.projects(
                request, actions, session, error=exc.message, status=exc.status
            )
        return await self.projects(
            request, actions, session, notice=f"Project {created['name']} created."
        )

    async def edit_project(self, request: Request, actions: Actions, session: Session) -> Response:
        form = await form_of(request)
        project_id = request.path_params["project_id"]
        try:
            await actions.update_project(
                project_id,
                name=_text(form, "name"),
                base_url=_text(form, "base_url"),
                api_key=_text(form, "api_key"),  # write-only: blank keeps the stored key
            )
        except LLMProxyError as exc:
            return await self.projects(
                request, actions, session, error=exc.message, status=exc.status
            )
        return await self.projects(request, actions, session, notice="Project updated.")

    async def project_active(
        self, request: Request, actions: Actions, session: Session
    ) -> Response:
        form = await form_of(request)
        try:
            await actions.set_project_active(
                request.path_params["project_id"], _text(form, "active") == "true"
            )
        except LLMProxyError as exc:
            return await self.projects(
                request, actions, session, error=exc.message, status=exc.status
            )
        return RedirectResponse(f"{PREFIX}/projects", status_code=303)

    # --- tokens ---

    async def tokens(
        self, request: Request, actions: Actions, session: Session, **ctx: Any
    ) -> Response:
        status = ctx.pop("status", 200)
        projects = await actions.list_projects()
        names = {p["id"]: p["name"] for p in projects}
        tokens = await actions.list_tokens()
        return self._render(
            request,
            "tokens.html",
            session,
            status,
            projects=projects,
            names=names,
            tokens=tokens,
            proxy_url=_public_url(request, self.console.settings),
            **ctx,
        )

    async def generate_token(
        self, request: Request, actions: Actions, session: Session
    ) -> Response:
        form = await form_of(request)
        try:
            created = await actions.generate_token(
                _text(form, "project_id") or "",
                duration=_text(form, "duration") or "never",
                max_requests=_number(form, "max_requests"),
                rpm=_number(form, "rpm"),
                max_concurrency=_number(form, "max_concurrency"),
                label=_text(form, "label") or "",
            )
        except LLMProxyError as exc:
            return await self.tokens(
                request, actions, session, error=exc.message, status=exc.status
            )
        # The only time the secret exists outside its hash: this one response, never cached.
        return await self.tokens(request, actions, session, new_token=created)

    async def token_action(self, request: Request, actions: Actions, session: Session) -> Response:
        token_id, verb = request.path_params["token_id"], request.path_params["verb"]
        form = await form_of(request)
        try:
            if verb == "revoke":
                await actions.revoke_token(token_id)
            elif verb == "reactivate":
                await actions.reactivate_token(token_id)
            elif verb == "limits":
                unlimited = _text(form, "max_requests") == "0"
                await actions.update_token(
                    token_id,
                    max_requests=None if unlimited else _number(form, "max_requests"),
                    unlimited=unlimited,
                    rpm=_number(form, "rpm"),
                    max_concurrency=_number(form, "max_concurrency"),
                    duration=_text(form, "duration"),
                )
            else:
                raise UserError(f"unknown token action {verb!r}")
        except LLMProxyError as exc:
            return await self.tokens(
                request, actions, session, error=exc.message, status=exc.status
            )
        return RedirectResponse(f"{PREFIX}/tokens", status_code=303)

    # --- usage, audit, slowest ---

    async def usage(self, request: Request, actions: Actions, session: Session) -> Response:
        projects = await actions.list_projects()
        tokens = await actions.list_tokens()
        names = {p["id"]: p["name"] for p in projects}
        selected = request.query_params.get("project_id") or ""
        recent: dict[str, Any] = {"events": []}
        if selected in names:
            recent = await actions.project_usage(selected, limit=RECENT_EVENTS)
        events = recent["events"]
        return self._render(
            request,
            "usage.html",
            session,
            projects=projects,
            tokens=tokens,
            names=names,
            selected=selected,
            events=events[:50],
            recent_count=len(events),
            by_model=_grouped(events, lambda e: e["model"] or "(none)"),
            by_day=_grouped(events, lambda e: (e["ts"] or "")[:10]),
        )

    async def audit(self, request: Request, actions: Actions, session: Session) -> Response:
        q = request.query_params
        since = {"1h": timedelta(hours=1), "1d": timedelta(days=1), "7d": timedelta(days=7)}
        window = since.get(q.get("since", ""))
        before = q.get("before_id", "")
        flt = AuditFilter(
            action=q.get("action") or None,
            outcome=q.get("outcome") or None,
            target_id=q.get("target_id") or None,
            since=datetime.now(UTC) - window if window else None,
            before_id=int(before) if before.isdigit() else None,
            limit=AUDIT_PAGE,
        )
        page = await actions.audit_page(flt)
        return self._render(
            request,
            "audit.html",
            session,
            rows=page["data"],
            next_before_id=page["next_before_id"],
            q=q,
        )

    async def slowest(self, request: Request, actions: Actions, session: Session) -> Response:
        requests = actions.slowest(50)
        phases = [p for p in PHASES if any(p in r["phases_ms"] for r in requests or [])]
        return self._render(request, "slowest.html", session, requests=requests, phases=phases)


def _grouped(events: list[dict[str, Any]], key: Callable[[dict[str, Any]], str]) -> list[Any]:
    """Requests and tokens per ``key``, largest first."""
    groups: dict[str, dict[str, Any]] = {}
    for event in events:
        name = key(event)
        row = groups.setdefault(name, {"name": name, "requests": 0, "tokens": 0, "errors": 0})
        row["requests"] += 1
        row["tokens"] += event["total_tokens"] or 0
        row["errors"] += 1 if (event["status"] or 0) >= 500 else 0
    return sorted(groups.values(), key=lambda r: (-r["requests"], r["name"]))


def _public_url(request: Request, settings: Any) -> str:
    """Where clients reach the proxy, for the copy-ready snippets: this host on PORT."""
    host = request.url.hostname or "127.0.0.1"
    return f"{request.url.scheme}://{host}:{settings.port}"


def _spool_bytes(directory: str) -> int:
    """Bytes of events spooled to this instance's disk, waiting for Redis."""
    try:
        return sum(e.stat().st_size for e in os.scandir(directory) if e.is_file())
    except OSError:
        return 0
