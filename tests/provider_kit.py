"""Projects of a given provider kind behind the real server, and their request events."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from shared.clock import new_id, utcnow
from shared.config import Settings
from shared.crypto import load_keyring
from shared.store import make_store
from shared.store.models import UpstreamRow
from tests.proxy_process import Provisioned, provision, run_async


async def _in_store(env: dict[str, str], cwd: Path, sql: str, params: tuple[Any, ...]) -> Any:
    here = os.getcwd()
    os.chdir(cwd)  # relative SQLite paths resolve where the server runs
    try:
        store = make_store(Settings.from_env(env))
        await store.open()
        try:
            async with store.transaction() as tx:
                if sql.startswith("SELECT"):
                    return await tx.fetchall(sql, params)
                await tx.execute(sql, params)
                return None
        finally:
            await store.close()
    finally:
        os.chdir(here)


def provision_kind(
    env: dict[str, str], cwd: Path, base_url: str, kind: str, *, name: str, api_key: str
) -> Provisioned:
    """A project of ``kind`` and a token for it (the kind written to the store directly, as
    the management layer will once it takes ``--kind``)."""
    creds = provision(env, cwd, base_url, name=name, api_key=api_key)
    run_async(
        _in_store(env, cwd, "UPDATE projects SET kind = %s WHERE id = %s", (kind, creds.project_id))
    )
    return creds


def event_row(
    env: dict[str, str], cwd: Path, request_id: str, timeout: float = 30.0
) -> dict[str, Any]:
    """The final request_events row of ``request_id``, once the dispatcher has written it."""
    deadline = time.monotonic() + timeout
    while True:
        rows = run_async(
            _in_store(
                env,
                cwd,
                "SELECT * FROM request_events WHERE request_id = %s AND phase = 'final'",
                (request_id,),
            )
        )
        if rows:
            return dict(rows[0])
        assert time.monotonic() < deadline, f"no event for {request_id}"
        time.sleep(0.05)


def event_count(env: dict[str, str], cwd: Path, project_id: str) -> int:
    rows = run_async(
        _in_store(
            env,
            cwd,
            "SELECT event_id FROM request_events WHERE project_id = %s AND phase = 'final'",
            (project_id,),
        )
    )
    return len(rows)


def add_upstream(
    env: dict[str, str],
    cwd: Path,
    project_id: str,
    base_url: str,
    *,
    api_key: str,
    priority: int = 0,
    weight: int = 1,
    kind: str = "openai",
) -> str:
    """An upstream row for ``project_id`` (its key encrypted as the management layer does);
    its id."""

    async def go() -> str:
        here = os.getcwd()
        os.chdir(cwd)
        try:
            settings = Settings.from_env(env)
            store = make_store(settings)
            await store.open()
            try:
                now = utcnow()
                row = UpstreamRow(
                    new_id(),
                    project_id,
                    kind,
                    base_url,
                    load_keyring(settings).encrypt(api_key),
                    weight,
                    priority,
                    True,
                    now,
                    now,
                )
                return (await store.create_upstream(row)).id
            finally:
                await store.close()
        finally:
            os.chdir(here)

    result: str = run_async(go())
    return result
