"""Why the CLI cannot use its database, said in one actionable line before any pool waits."""

from __future__ import annotations

import psycopg

from shared.errors import Unavailable

CONNECT_SECONDS = 5  # a server that answers at all answers well within this


def _where(url: str) -> tuple[str, str, str]:
    info = psycopg.conninfo.conninfo_to_dict(url)
    where = f"{info.get('host', 'localhost')}:{info.get('port', 5432)}"
    return where, str(info.get("dbname", "")), str(info.get("user", ""))


def explain(url: str, message: str) -> str:
    """The one line for a failed Postgres connection, from the server's own words."""
    where, dbname, user = _where(url)
    text = message.lower()
    if "database" in text and "does not exist" in text:
        return (
            f'database "{dbname}" does not exist on {where}: create it (createdb {dbname}) '
            "or fix DATABASE_URL"
        )
    if any(w in text for w in ("password authentication", "role", "pg_hba.conf", "no password")):
        return (
            f"authentication failed for user {user!r} on {where}: check the user and password "
            "in DATABASE_URL"
        )
    if any(w in text for w in ("refused", "timeout", "timed out", "could not translate")):
        return f"no database server answers at {where}: is Postgres running there (DATABASE_URL)?"
    return f"cannot connect to the database at {where}"


async def probe_postgres(url: str) -> None:
    """One direct connection: the pool would retry for its whole timeout and then only say that
    it could not connect; this says why, at once."""
    try:
        conn = await psycopg.AsyncConnection.connect(url, connect_timeout=CONNECT_SECONDS)
    except psycopg.OperationalError as exc:
        raise Unavailable(explain(url, str(exc))) from None
    await conn.close()
