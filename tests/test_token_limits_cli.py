"""Per-token limits through `llm-proxy manage token`, and the quota left as operators see it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.management import remaining_requests, token_state
from shared.store import Token
from tests.test_cli import UPSTREAM_KEY, cli, fails, ok_json


def test_generate_and_update_rpm_and_concurrency(db_env: dict[str, str]) -> None:
    env = db_env
    pid = ok_json(env, "manage", "project", "create", "--name", "lim", "--api-key", UPSTREAM_KEY)[
        "id"
    ]
    gen = ok_json(
        env,
        "manage",
        "token",
        "generate",
        "--project-id",
        pid,
        "--max-requests",
        "100",
        "--rpm",
        "30",
        "--max-concurrency",
        "2",
    )
    assert (gen["rpm"], gen["max_concurrency"], gen["remaining_requests"]) == (30, 2, 100)
    tid = gen["id"]
    shown = ok_json(env, "manage", "token", "show", tid)
    assert (shown["rpm"], shown["max_concurrency"]) == (30, 2)

    upd = ok_json(env, "manage", "token", "update", tid, "--rpm", "0", "--max-concurrency", "0")
    assert upd["rpm"] == 0  # explicitly no per-token rate limit
    assert upd["max_concurrency"] is None  # 0 removes the cap
    upd = ok_json(env, "manage", "token", "update", tid, "--rpm", "120")
    assert upd["rpm"] == 120 and upd["max_requests"] == 100

    plain = ok_json(env, "manage", "token", "generate", "--project-id", pid)
    assert plain["rpm"] is None and plain["max_concurrency"] is None

    assert "rpm must be 0" in fails(env, "manage", "token", "update", tid, "--rpm", "-1")
    assert "max concurrency must be 0" in fails(
        env, "manage", "token", "generate", "--project-id", pid, "--max-concurrency", "-3"
    )
    audit = ok_json(env, "manage", "audit", "list", "--action", "token.update")
    assert [a["details"]["rpm"] for a in audit] == [-1, 120, 0]  # failures are audited too
    assert audit[0]["outcome"] == "failure"


def test_help_mentions_the_new_flags(db_env: dict[str, str]) -> None:
    out = cli(db_env, "manage", "token", "generate", "--help").stdout
    assert "--rpm" in out and "--max-concurrency" in out
    out = cli(db_env, "manage", "token", "update", "--help").stdout
    assert "--rpm" in out and "--max-concurrency" in out


def _token(**fields: object) -> Token:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    return Token(
        id="t",
        token_hash="h",
        display_prefix="sk-llmp-abcd",
        project_id="p",
        label="",
        is_active=True,
        created_at=now,
        updated_at=now,
        **fields,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("fields", "count_hits", "remaining"),
    [
        ({}, False, None),
        ({"max_requests": 100}, False, 100),
        # events only (Redis path): hits excluded unless they count
        ({"max_requests": 100, "request_count": 40, "cache_hit_count": 15}, False, 75),
        ({"max_requests": 100, "request_count": 40, "cache_hit_count": 15}, True, 60),
        # database path: the admission counter runs ahead of the events
        ({"max_requests": 100, "request_count": 40, "quota_used": 52}, False, 48),
        ({"max_requests": 100, "request_count": 60, "quota_used": 52}, True, 40),
        ({"max_requests": 10, "request_count": 40}, False, 0),
    ],
)
def test_remaining_requests(fields: dict[str, int], count_hits: bool, remaining: int) -> None:
    token = _token(**fields)
    assert remaining_requests(token, count_cache_hits=count_hits) == remaining
    expected_state = "exhausted" if remaining == 0 else "active"
    assert token_state(token, count_cache_hits=count_hits) == expected_state
