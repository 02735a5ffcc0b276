"""The CLI tells apart a missing database, refused credentials, a server that is down and a
schema not migrated: one actionable line each, at once (no pool timeout to sit through)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.services import create_database, drop_database, free_port, pg_url_for, require
from tests.test_cli import fails


@pytest.fixture
def bare_database() -> Iterator[str]:
    require("PostgreSQL", "127.0.0.1", 5432)
    url = create_database()
    yield url
    drop_database(url)


def test_each_connection_failure_says_what_to_do(bare_database: str, encryption_key: str) -> None:
    def pg(url: str) -> dict[str, str]:
        return {"DB_DRIVER": "postgres", "DATABASE_URL": url, "ENCRYPTION_KEY": encryption_key}

    base = bare_database.rpartition("/")[0]
    cases = [
        (pg(pg_url_for("llmproxy_no_such_db")), 'database "llmproxy_no_such_db" does not exist'),
        (
            pg(base.replace("postgres@", "no_such_role@") + "/postgres"),
            "authentication failed",
        ),
        (pg(f"postgresql://postgres@127.0.0.1:{free_port()}/x"), "no database server answers"),
        (pg(bare_database), "run `llm-proxy migrate` first"),
    ]
    for env, expected in cases:
        started = time.monotonic()
        line = fails(env, "manage", "project", "list")
        assert expected in line, line
        assert time.monotonic() - started < 8, f"{expected!r} took a pool timeout"


def test_a_schema_behind_the_code_is_named(bare_database: str, encryption_key: str) -> None:
    import psycopg

    with psycopg.connect(bare_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO schema_migrations VALUES (1, '0001_initial')")
    env = {"DB_DRIVER": "postgres", "DATABASE_URL": bare_database, "ENCRYPTION_KEY": encryption_key}
    line = fails(env, "manage", "project", "list")
    assert "schema is at version 1 and this llm-proxy needs" in line, line
