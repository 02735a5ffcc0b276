"""One contract for both stores, run against SQLite and the loopback Postgres."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.clock import new_id, utcnow
from shared.config import Settings
from shared.events import ACCEPTED, FINAL, RequestEvent
from shared.store import AuditEvent, AuditFilter, Project, SqlStore, Token, make_store
from tests.services import create_database, drop_database, require


def project(name: str = "alpha", **kw: object) -> Project:
    now = utcnow()
    fields: dict[str, object] = {
        "id": new_id(),
        "name": name,
        "base_url": "https://api.example.com/v1",
        "api_key_enc": "v1.x.y",
        "is_active": True,
        "created_at": now,
        "updated_at": now,
    }
    fields.update(kw)
    return Project(**fields)  # type: ignore[arg-type]


def token(project_id: str, **kw: object) -> Token:
    now = utcnow()
    fields: dict[str, object] = {
        "id": new_id(),
        "token_hash": new_id(),
        "display_prefix": "sk-llmp-abcd",
        "project_id": project_id,
        "label": "",
        "is_active": True,
        "created_at": now,
        "updated_at": now,
    }
    fields.update(kw)
    return Token(**fields)  # type: ignore[arg-type]


def event(tok: Token, **kw: object) -> RequestEvent:
    fields: dict[str, object] = {
        "event_id": new_id(),
        "request_id": "req-1",
        "ts": utcnow().timestamp(),
        "project_id": tok.project_id,
        "token_id": tok.id,
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": 200,
    }
    fields.update(kw)
    return RequestEvent(**fields)  # type: ignore[arg-type]


async def test_migrate_is_idempotent(store: SqlStore) -> None:
    assert await store.migrate() == []
    assert await store.schema_version() >= 1


async def test_project_crud(store: SqlStore) -> None:
    p = await store.create_project(project())
    assert (await store.get_project(p.id)) == p
    assert (await store.get_project_by_name("alpha")) == p
    assert p.created_at.tzinfo is not None and p.created_at.utcoffset() == timedelta(0)
    updated, revoked = await store.update_project(p.id, {"name": "beta", "is_active": False})
    assert updated is not None and updated.name == "beta" and not updated.is_active
    assert revoked == 0
    assert updated.updated_at >= p.updated_at
    assert [x.id for x in await store.list_projects()] == [p.id]
    assert await store.delete_project(p.id)
    assert await store.get_project(p.id) is None
    assert not await store.delete_project(p.id)


async def test_unknown_and_malformed_ids_are_simply_absent(store: SqlStore) -> None:
    for bad in (new_id(), "not-a-uuid", "'; DROP TABLE projects; --"):
        assert await store.get_project(bad) is None
        assert await store.get_token(bad) is None
        assert (await store.update_project(bad, {"name": "x"}))[0] is None
        assert await store.update_token(bad, {"label": "x"}) is None
        assert await store.revoke_token(bad) == 0
        assert await store.list_tokens(bad) == []


async def test_project_names_are_unique(store: SqlStore) -> None:
    await store.create_project(project("same"))
    with pytest.raises(Exception):
        await store.create_project(project("same"))
    assert len(await store.list_projects()) == 1


async def test_tokens_lookup_update_and_revoke(store: SqlStore) -> None:
    p = await store.create_project(project())
    expires = utcnow() + timedelta(hours=1)
    t = await store.create_token(token(p.id, expires_at=expires, max_requests=10, label="ci"))
    found = await store.find_token(t.token_hash)
    assert found is not None
    assert found.token == t and found.project == p
    assert found.token.expires_at is not None
    assert abs((found.token.expires_at - expires).total_seconds()) < 0.001
    assert await store.find_token("0" * 64) is None

    t2 = await store.update_token(t.id, {"max_requests": 20, "label": "ci2"})
    assert t2 is not None and t2.max_requests == 20 and t2.label == "ci2"
    assert await store.revoke_token(t.id) == 1
    assert await store.revoke_token(t.id) == 0  # already revoked
    revoked = await store.get_token(t.id)
    assert revoked is not None and not revoked.is_active and revoked.revoked_at is not None


async def test_revoke_all_project_tokens_at_once(store: SqlStore) -> None:
    p = await store.create_project(project())
    other = await store.create_project(project("other"))
    mine = [await store.create_token(token(p.id)) for _ in range(3)]
    theirs = await store.create_token(token(other.id))
    assert await store.revoke_project_tokens(p.id) == 3
    states = [await store.get_token(t.id) for t in mine]
    assert all(s is not None and not s.is_active for s in states)
    still = await store.get_token(theirs.id)
    assert still is not None and still.is_active
    _, revoked = await store.update_project(other.id, {"is_active": False}, revoke_tokens=True)
    assert revoked == 1


async def test_deleting_a_project_deletes_its_tokens(store: SqlStore) -> None:
    p = await store.create_project(project())
    t = await store.create_token(token(p.id))
    await store.delete_project(p.id)
    assert await store.get_token(t.id) is None


async def test_record_events_is_exactly_once_with_aggregates(store: SqlStore) -> None:
    p = await store.create_project(project())
    t = await store.create_token(token(p.id))
    events = [
        event(t, prompt_tokens=3, completion_tokens=5),
        event(t, cache_status="hit"),
        event(t, prompt_tokens=1, completion_tokens=1),
    ]
    assert await store.record_events(events) == 3
    assert await store.record_events(events) == 0  # redelivery: nothing doubles
    assert await store.record_events([*events, event(t)]) == 1
    again = event(t)
    assert await store.record_events([again, again]) == 1  # twice in one batch: once
    got = await store.get_token(t.id)
    assert got is not None
    assert (got.request_count, got.cache_hit_count) == (5, 1)
    assert (got.prompt_tokens, got.completion_tokens) == (4, 6)
    assert got.last_used_at is not None
    proj = await store.get_project(p.id)
    assert proj is not None and proj.request_count == 5 and proj.cache_hit_count == 1
    assert await store.count_events(t.id) == 5


@pytest.mark.parametrize("path", ["record_events", "record_batch"])
async def test_a_final_replaces_its_accepted_row_and_counts_once(
    store: SqlStore, path: str
) -> None:
    """Accepted then final, final then accepted (across batches), both in one batch, repeats,
    and an accepted record whose final never comes: one row per request, each request
    counted once, the usage of its final counted once, a lone accepted row left flagged."""
    p = await store.create_project(project())
    t = await store.create_token(token(p.id))

    async def write(*events: RequestEvent) -> None:
        if path == "record_events":
            await store.record_events(list(events))
        else:
            await store.record_batch(list(events))

    def pair(**usage: Any) -> tuple[RequestEvent, RequestEvent]:
        final = event(t, **usage)
        accepted = dataclasses.replace(
            final, status=0, prompt_tokens=0, completion_tokens=0, phase=ACCEPTED
        )
        return accepted, final

    a1, f1 = pair(prompt_tokens=3, completion_tokens=5)
    await write(a1)
    await write(a1)  # redelivered accepted
    await write(f1)
    await write(f1, a1)  # redelivered, in any order
    a2, f2 = pair(prompt_tokens=7, completion_tokens=11)
    await write(f2)  # the final overtook its accepted record
    await write(a2)
    a3, f3 = pair(prompt_tokens=13, completion_tokens=17)
    await write(a3, f3)  # both in one batch
    a4, _ = pair(prompt_tokens=19)
    await write(a4)  # its worker died: no final
    got = await store.get_token(t.id)
    proj = await store.get_project(p.id)
    assert got is not None and proj is not None
    assert got.request_count == proj.request_count == 4
    assert (got.prompt_tokens, got.completion_tokens) == (3 + 7 + 13, 5 + 11 + 17)
    assert await store.count_events(t.id) == 4
    rows = {e.event_id: e for e in await store.list_request_events(token_id=t.id)}
    assert {i: (rows[i].phase, rows[i].status) for i in rows} == {
        a1.event_id: (FINAL, 200),
        a2.event_id: (FINAL, 200),
        a3.event_id: (FINAL, 200),
        a4.event_id: (ACCEPTED, 0),
    }
    assert rows[a1.event_id].prompt_tokens == 3


async def test_request_events_page_newest_first_per_token_and_project(store: SqlStore) -> None:
    p = await store.create_project(project())
    other = await store.create_project(project("other"))
    t = await store.create_token(token(p.id))
    t2 = await store.create_token(token(p.id))
    foreign = await store.create_token(token(other.id))
    base = utcnow().timestamp()
    # Two events share a timestamp: the cursor must still neither skip nor repeat one.
    mine = [event(t, ts=base + i // 2, model=f"m{i}", stream=i == 1) for i in range(5)]
    await store.record_events([*mine, event(t2, ts=base + 9), event(foreign, ts=base + 9)])

    page1 = await store.list_request_events(token_id=t.id, limit=2)
    page2 = await store.list_request_events(
        token_id=t.id, before_event_id=page1[-1].event_id, limit=2
    )
    page3 = await store.list_request_events(
        token_id=t.id, before_event_id=page2[-1].event_id, limit=2
    )
    seen = [e.event_id for e in page1 + page2 + page3]
    expected = sorted(mine, key=lambda e: (e.ts, e.event_id), reverse=True)
    assert seen == [e.event_id for e in expected]
    assert [e.model for e in page1] == ["m4", expected[1].model]
    got = {e.event_id: e for e in page1 + page2 + page3}
    assert got[mine[1].event_id].stream is True and got[mine[0].event_id].stream is False
    assert got[mine[4].event_id].token_id == t.id and got[mine[4].event_id].project_id == p.id
    assert abs(got[mine[4].event_id].ts - mine[4].ts) < 0.001

    by_project = await store.list_request_events(project_id=p.id, limit=100)
    assert len(by_project) == 6 and by_project[0].token_id == t2.id
    assert await store.list_request_events(token_id=t.id, project_id=other.id) == []
    assert await store.list_request_events(token_id="not-a-uuid") == []
    assert await store.list_request_events(token_id=t.id, before_event_id=new_id()) == []
    assert await store.list_request_events(token_id=t.id, before_event_id="garbage") == []


async def test_refused_requests_are_recorded_but_not_counted(store: SqlStore) -> None:
    """The aggregates count admitted requests (what token quotas are seeded from): events of
    requests the proxy refused before forwarding stay in request_events only."""
    p = await store.create_project(project())
    t = await store.create_token(token(p.id, max_requests=10))
    events = [
        event(t),
        event(t, cache_status="hit"),
        event(t, status=502, error="upstream_error"),  # admitted, then the upstream failed
        event(t, status=429, error="rate_limit_exceeded"),
        event(t, status=429, error="quota_exceeded"),
        event(t, status=503, error="service_unavailable"),
    ]
    assert await store.record_events(events) == 6
    got = await store.get_token(t.id)
    assert got is not None and (got.request_count, got.cache_hit_count) == (3, 1)
    assert await store.get_quota_used(t.id, count_cache_hits=False) == 2
    assert await store.count_events(t.id) == 6


async def test_proxy_rejections_are_stored_but_not_counted_as_requests(store: SqlStore) -> None:
    """request_count counts admitted requests: rate-limit, quota and overload refusals are
    rows (and mark the token used), not requests."""
    p = await store.create_project(project())
    t = await store.create_token(token(p.id))
    events = [
        event(t),
        event(t, status=429, error="rate_limit_exceeded"),
        event(t, status=429, error="quota_exceeded"),
        event(t, status=503, error="overloaded"),
        event(t, status=502, error="upstream_error"),  # admitted, then failed upstream
    ]
    assert await store.record_events(events) == 5
    got = await store.get_token(t.id)
    assert got is not None and got.request_count == 2 and got.last_used_at is not None
    proj = await store.get_project(p.id)
    assert proj is not None and proj.request_count == 2
    assert await store.count_events(t.id) == 5


async def test_audit_filters_and_pages_newest_first(store: SqlStore) -> None:
    for i in range(5):
        await store.add_audit(
            AuditEvent(
                action="token.revoke" if i % 2 else "project.create",
                outcome="success",
                actor="cli:test",
                target_id=f"t{i}",
                details={"i": i},
            )
        )
    page1 = await store.list_audit(AuditFilter(limit=2))
    assert [e.target_id for e in page1] == ["t4", "t3"]
    assert page1[0].details == {"i": 4}
    page2 = await store.list_audit(AuditFilter(limit=2, before_id=page1[-1].id))
    assert [e.target_id for e in page2] == ["t2", "t1"]
    revokes = await store.list_audit(AuditFilter(action="token.revoke"))
    assert [e.target_id for e in revokes] == ["t3", "t1"]
    assert all(e.ts is not None for e in revokes)


async def test_sqlite_store_survives_two_processes_writing(tmp_path: Path) -> None:
    """Two stores on one SQLite file (as two gunicorn workers) both write without errors."""
    settings = Settings.from_env({"DATABASE_URL": str(tmp_path / "shared.db")})
    a, b = make_store(settings), make_store(settings)
    await a.open()
    await b.open()
    await a.migrate()
    p = await a.create_project(project())
    t = await a.create_token(token(p.id))
    await asyncio.gather(*(s.record_events([event(t)]) for s in (a, b) for _ in range(20)))
    got = await b.get_token(t.id)
    assert got is not None and got.request_count == 40
    await a.close()
    await b.close()


def test_concurrent_migrations_on_postgres_are_safe() -> None:
    """Four `llm-proxy migrate` processes at once on an empty database: all succeed, once."""
    require("PostgreSQL", "127.0.0.1", 5432)
    url = create_database()
    try:
        env = {"DB_DRIVER": "postgres", "DATABASE_URL": url, "PATH": "/usr/bin:/bin"}
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "admin", "migrate", "--json"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        outs = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0, 0], outs
        applied = [o[0] for o in outs if '"applied": [\n    1' in o[0]]
        assert len(applied) == 1, outs
    finally:
        drop_database(url)
