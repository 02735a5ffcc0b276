"""Storage: one interface (``SqlStore``), a SQLite and a Postgres implementation."""

from __future__ import annotations

from shared.config import Settings
from shared.store.base import SqlStore, TokenAuth
from shared.store.models import AuditEvent, AuditFilter, Project, Token

__all__ = ["AuditEvent", "AuditFilter", "Project", "SqlStore", "Token", "TokenAuth", "make_store"]


def make_store(settings: Settings, *, statement_timeout: float | None = None) -> SqlStore:
    """The store the settings ask for (not yet opened). ``statement_timeout`` (seconds) is set
    on every Postgres connection when given (the dispatcher's writes)."""
    if settings.db_driver == "postgres":
        from shared.store.partitions import PartitionPolicy
        from shared.store.postgres import PostgresStore

        return PostgresStore(
            settings.database_url,
            pool_size=settings.database_pool_size,
            min_idle=settings.database_max_idle_conns,
            max_lifetime=settings.database_conn_max_lifetime,
            connect_timeout=settings.database_connect_timeout,
            tcp_user_timeout=settings.database_tcp_user_timeout,
            statement_timeout=statement_timeout,
            read_url=settings.database_read_url,
            partitioning=PartitionPolicy(
                settings.request_event_partition_span, settings.request_event_partitions_ahead
            ),
        )
    from shared.store.sqlite import SqliteStore

    return SqliteStore(settings.sqlite_path)
