"""The store: connections, migrations and every table; subclasses supply their dialect."""

from __future__ import annotations

import abc

from shared.clock import utcnow
from shared.store.audit import Audit
from shared.store.budgets import Budgets
from shared.store.changes import Changes
from shared.store.dead_letters import DeadLetters
from shared.store.migrations import load
from shared.store.money import Money
from shared.store.projects import Projects
from shared.store.request_events import RequestEvents
from shared.store.rows import (
    COMPLETE_EVENT_SQL as COMPLETE_EVENT_SQL,
)
from shared.store.rows import (
    DEAD_LETTER_COLUMNS as DEAD_LETTER_COLUMNS,
)
from shared.store.rows import (
    EVENT_COLUMNS as EVENT_COLUMNS,
)
from shared.store.rows import (
    INSERT_EVENT_SQL as INSERT_EVENT_SQL,
)
from shared.store.rows import (
    PROJECT_COLUMNS as PROJECT_COLUMNS,
)
from shared.store.rows import (
    TOKEN_COLUMNS as TOKEN_COLUMNS,
)
from shared.store.rows import (
    Inserted as Inserted,
)
from shared.store.rows import (
    Row as Row,
)
from shared.store.rows import (
    TokenAuth as TokenAuth,
)
from shared.store.rows import (
    Tx as Tx,
)
from shared.store.rows import (  # re-exported: the dialects and tools import them from here
    complete_params as complete_params,
)
from shared.store.rows import (
    event_from_row as event_from_row,
)
from shared.store.rows import (
    event_params as event_params,
)
from shared.store.rows import (
    one_per_request as one_per_request,
)
from shared.store.rows import (
    price_events as price_events,
)
from shared.store.rows import (
    project_from_row as project_from_row,
)
from shared.store.rows import (
    token_from_row as token_from_row,
)
from shared.store.rows import (
    usage_by_owner as usage_by_owner,
)
from shared.store.rows import (
    usage_updates as usage_updates,
)
from shared.store.tokens import Tokens
from shared.store.upstreams import Upstreams


class SqlStore(
    Projects, Tokens, Audit, Changes, RequestEvents, DeadLetters, Upstreams, Money, Budgets
):
    """Every table over SQL shared by SQLite and Postgres: one module per table, each over the
    ``Tx`` seam; subclasses supply connections and their dialect's differences."""

    @abc.abstractmethod
    async def open(self, *, wait: bool = False) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    #: the migrations folder and the schema_migrations table's column types
    dialect = "sqlite"
    migrations_table_sql = (
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )

    async def lock_for_migration(self, tx: Tx) -> None:
        """Serialise concurrent migrators (SQLite's BEGIN IMMEDIATE already does)."""

    async def prepare_step(self, name: str) -> None:
        """A migration step's work before the migrations' transaction (see migrations)."""
        raise RuntimeError(f"migration step {name!r} is unknown to the {self.dialect} store")

    async def apply_step(self, tx: Tx, name: str) -> None:
        """A migration step's work in the migrations' transaction."""
        raise RuntimeError(f"migration step {name!r} is unknown to the {self.dialect} store")

    async def migrate(self) -> list[int]:
        """Apply pending migrations in one transaction; return the versions applied now. A
        pending migration's Python step prepares first, outside it."""
        done = await self.applied_versions()
        for migration in load(self.dialect):
            if migration.version not in done and migration.step:
                await self.prepare_step(migration.step)
        applied: list[int] = []
        async with self.transaction() as tx:
            await self.lock_for_migration(tx)
            await tx.execute(self.migrations_table_sql)
            rows = await tx.fetchall("SELECT version FROM schema_migrations")
            done = {r["version"] for r in rows}
            for migration in load(self.dialect):
                if migration.version in done:
                    continue
                for statement in migration.statements():
                    await tx.execute(statement)
                if migration.step:
                    await self.apply_step(tx, migration.step)
                await tx.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, utcnow()),
                )
                applied.append(migration.version)
        return applied

    @abc.abstractmethod
    async def schema_version(self) -> int: ...

    async def applied_versions(self) -> set[int]:
        if not await self.schema_version():
            return set()
        async with self.transaction(readonly=True) as tx:
            rows = await tx.fetchall("SELECT version FROM schema_migrations")
        return {int(r["version"]) for r in rows}

    def lost_connection(self, exc: BaseException) -> bool:
        """Whether ``exc`` says a pooled connection was dead (worth one retry on another)."""
        return False

    async def drop_broken_connections(self) -> None:
        """Test the idle pooled connections and replace the dead ones (no-op without a pool)."""
        return None

    def lagging(self) -> SqlStore:
        """The store for reads that tolerate replica lag (usage reports, event and audit
        listings): the read replica of DATABASE_READ_URL when there is one, else this store.
        Never for a read that must see this process's own writes."""
        return self

    async def ping(self) -> None:
        async with self.transaction(readonly=True) as tx:
            await tx.fetchone("SELECT 1 AS ok")
