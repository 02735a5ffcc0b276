"""Which database errors belong to one row (retrying cannot help) rather than to the database."""

from __future__ import annotations

import sqlite3

import orjson
import psycopg

# Errors that belong to one row and will recur on every retry. Everything else (connection
# lost, pool timeout, deadlock, a locked SQLite file, a missing table) is the database's state:
# wait and retry. OverflowError: a Python int no SQLite INTEGER (or psycopg dumper) takes.
_ROW_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.DataError,
    psycopg.IntegrityError,
    sqlite3.DataError,
    sqlite3.IntegrityError,
    OverflowError,
    orjson.JSONEncodeError,  # the Postgres store sends a batch as one JSON document
)


def is_row_error(exc: BaseException) -> bool:
    return isinstance(exc, _ROW_ERRORS)
