"""The audit_events table: management actions and security events."""

from __future__ import annotations

import json
from typing import Any

from shared.clock import utcnow
from shared.store.models import AuditEvent, AuditFilter
from shared.store.rows import Tables


class Audit(Tables):
    async def add_audit(self, event: AuditEvent) -> None:
        async with self.transaction() as tx:
            await tx.execute(
                "INSERT INTO audit_events (ts, actor, action, target_type, target_id, outcome, "
                "details, request_id, client_ip) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    event.ts or utcnow(),
                    event.actor,
                    event.action,
                    event.target_type,
                    event.target_id,
                    event.outcome,
                    json.dumps(event.details, sort_keys=True),
                    event.request_id,
                    event.client_ip,
                ),
            )

    async def list_audit(self, flt: AuditFilter) -> list[AuditEvent]:
        """Newest first; page with ``before_id`` set to the last id of the previous page."""
        clauses: list[str] = []
        params: list[Any] = []
        for column, value, op in (
            ("action", flt.action, "="),
            ("target_id", flt.target_id, "="),
            ("outcome", flt.outcome, "="),
            ("ts", flt.since, ">="),
            ("ts", flt.until, "<"),
            ("id", flt.before_id, "<"),
        ):
            if value is not None:
                clauses.append(f"{column} {op} %s")
                params.append(value)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        async with self.transaction(readonly=True) as tx:
            rows = await tx.fetchall(
                "SELECT id, ts, actor, action, target_type, target_id, outcome, details, "
                f"request_id, client_ip FROM audit_events {where} ORDER BY id DESC LIMIT %s",
                (*params, flt.limit),
            )
        out = []
        for row in rows:
            details = row["details"]
            row["details"] = json.loads(details) if isinstance(details, str) else details
            out.append(AuditEvent(**row))
        return out
