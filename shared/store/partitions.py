"""request_events on Postgres, partitioned by RANGE (ts): spans, the partitions kept ahead,
retention by dropping them, and migration 0014's conversion of the single table.

The key is (event_id, ts): ``ts`` is the request's arrival time, carried by both of its events
and by every redelivery, so a repeat lands in the same partition and meets its row there.

Partitions are ``request_events_pYYYYMMDD`` (their lower bound, UTC). Two are special:
``request_events_legacy``, the pre-0014 table attached as it was, from MINVALUE to the first
bound; and ``request_events_default``, which takes a row no partition covers (a clock far off,
a replay into a range already dropped) rather than refusing it. Creating a partition moves the
default's rows of its range into it; retention deletes default and legacy rows older than the
cutoff in chunks, as before partitioning, and drops every other partition whole.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shared.store.rows import Tx

log = logging.getLogger("llm_proxy.store")

SPANS = ("day", "week", "month")
PARENT = "request_events"
LEGACY = "request_events_legacy"
DEFAULT = "request_events_default"
#: the pre-0014 table's check that every row is below the first bound, built without a long lock
BOUND_CHECK = "request_events_partition_bound"
#: the unique index on (event_id, ts) the pre-0014 table needs to become a partition
KEY_INDEX = "request_events_event_ts_key"
#: a short wait for DDL locks: one held by a long query fails this round, not every write queued
LOCK_TIMEOUT = "5s"
# The advisory lock `llm-proxy migrate` runs hold (shared with PostgresStore).
MIGRATION_LOCK_KEY = 0x6C6C6D70726F7879  # "llmproxy"
# Any fixed 64-bit number: one creator of partitions at a time, the others skip the round.
PARTITION_LOCK_KEY = 0x6C6C6D7061727473  # "llmparts"
DELETE_CHUNK = 10_000


@dataclass(frozen=True, slots=True)
class PartitionPolicy:
    """REQUEST_EVENT_PARTITION_SPAN and REQUEST_EVENT_PARTITIONS_AHEAD."""

    span: str = "day"
    ahead: int = 7


@dataclass(frozen=True, slots=True)
class Partition:
    name: str
    lower: datetime | None  # None: MINVALUE (or the default partition)
    upper: datetime | None
    is_default: bool = False


@dataclass(slots=True)
class Pruned:
    """What one retention run removed."""

    dropped: list[str]
    deleted: int = 0


def span_start(moment: datetime, span: str) -> datetime:
    """The start (UTC) of the span holding ``moment``."""
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if span == "day":
        return day
    if span == "week":
        return day - timedelta(days=day.weekday())
    if span == "month":
        return day.replace(day=1)
    raise ValueError(f"unknown partition span {span!r}")


def next_start(start: datetime, span: str) -> datetime:
    if span == "month":
        return (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    return start + timedelta(days=1 if span == "day" else 7)


def first_bound(now: datetime, span: str) -> datetime:
    """Where the pre-0014 table ends: the first span boundary a full day away, so writes that
    arrive while the conversion runs stay below it."""
    return next_start(span_start(now + timedelta(days=1), span), span)


def wanted(now: datetime, policy: PartitionPolicy) -> list[tuple[datetime, datetime]]:
    """The ranges to have: the previous span (late events), the current one, ``ahead`` more."""
    start = span_start(now, policy.span)
    previous = span_start(start - timedelta(days=1), policy.span)
    out = []
    lower = previous
    for _ in range(policy.ahead + 2):
        upper = next_start(lower, policy.span)
        out.append((lower, upper))
        lower = upper
    return out


def missing(
    ranges: Sequence[tuple[datetime, datetime]], existing: Sequence[Partition]
) -> list[tuple[datetime, datetime]]:
    """The parts of ``ranges`` no existing partition covers (after a span change, a range may
    be cut by an older, wider or narrower partition)."""
    out = []
    for lower, upper in ranges:
        pieces = [(lower, upper)]
        for p in existing:
            if p.is_default:
                continue
            lo = p.lower or datetime.min.replace(tzinfo=UTC)
            hi = p.upper or datetime.max.replace(tzinfo=UTC)
            cut = []
            for a, b in pieces:
                if hi <= a or lo >= b:
                    cut.append((a, b))
                    continue
                if a < lo:
                    cut.append((a, lo))
                if hi < b:
                    cut.append((hi, b))
            pieces = cut
        out.extend(pieces)
    return out


def partition_name(lower: datetime) -> str:
    return f"{PARENT}_p{lower.astimezone(UTC):%Y%m%d}"


def expired(partitions: Sequence[Partition], cutoff: datetime) -> list[Partition]:
    """Partitions wholly older than ``cutoff`` (the default partition never is)."""
    return [p for p in partitions if not p.is_default and p.upper is not None and p.upper <= cutoff]


# --- Postgres I/O ---


def _literal(moment: datetime) -> str:
    """A timestamptz literal for DDL, which takes no parameters (our own datetimes only)."""
    return f"'{moment.astimezone(UTC).isoformat()}'::timestamptz"


_PARTITIONS_SQL = (
    "SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT' AS is_default, "
    "(regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \\(''([^'']*)''\\)'))[1]"
    "::timestamptz AS lower, "
    "(regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']*)''\\)'))[1]"
    "::timestamptz AS upper "
    "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "WHERE i.inhparent = to_regclass(%s) ORDER BY is_default DESC, lower NULLS FIRST"
)


async def list_partitions(tx: Tx) -> list[Partition]:
    rows = await tx.fetchall(_PARTITIONS_SQL, (PARENT,))
    return [Partition(r["name"], r["lower"], r["upper"], bool(r["is_default"])) for r in rows]


async def create_partition(tx: Tx, lower: datetime, upper: datetime) -> str:
    """Create the partition for [lower, upper) without a strong lock on the parent: a plain
    table attached afterwards (ATTACH takes SHARE UPDATE EXCLUSIVE, which writes and reads
    pass; CREATE ... PARTITION OF would take ACCESS EXCLUSIVE). The default partition's rows of
    that range move in first, or the attach would refuse."""
    name = partition_name(lower)
    await tx.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    await tx.execute(f"CREATE TABLE {name} (LIKE {PARENT} INCLUDING DEFAULTS)")
    bounds = (lower, upper)
    stray = await tx.fetchone(
        f"SELECT EXISTS (SELECT 1 FROM {DEFAULT} WHERE ts >= %s AND ts < %s) AS any", bounds
    )
    if stray and stray["any"]:
        moved = await tx.execute(
            f"WITH moved AS (DELETE FROM {DEFAULT} WHERE ts >= %s AND ts < %s RETURNING *) "
            f"INSERT INTO {name} SELECT * FROM moved",
            bounds,
        )
        log.warning("partition %s: moved %d rows in from %s", name, moved, DEFAULT)
    await tx.execute(
        f"ALTER TABLE {PARENT} ATTACH PARTITION {name} "
        f"FOR VALUES FROM ({_literal(lower)}) TO ({_literal(upper)})"
    )
    return name


async def drop_partition(tx: Tx, name: str) -> None:
    # ACCESS EXCLUSIVE on the parent for a moment (DETACH CONCURRENTLY is not allowed next
    # to a default partition): bounded, so a long query costs a later retry, not a stall.
    await tx.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    await tx.execute(f"DROP TABLE {name}")


async def delete_chunk(tx: Tx, table: str, cutoff: datetime) -> int:
    return await tx.execute(
        f"DELETE FROM {table} WHERE (event_id, ts) IN (SELECT event_id, ts FROM {table} "
        "WHERE ts < %s ORDER BY ts LIMIT %s)",
        (cutoff, DELETE_CHUNK),
    )


# --- migration 0014: the single table becomes the first partition ---


async def bound_check(tx: Tx) -> datetime | None:
    """The bound of the pre-0014 table's validated check, if built."""
    row = await tx.fetchone(
        "SELECT (regexp_match(pg_get_constraintdef(oid), '''([^'']+)'''))[1]::timestamptz "
        "AS bound FROM pg_constraint WHERE conrelid = to_regclass(%s) AND conname = %s "
        "AND convalidated",
        (PARENT, BOUND_CHECK),
    )
    return row["bound"] if row else None


async def is_plain_table(tx: Tx) -> bool:
    row = await tx.fetchone("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", (PARENT,))
    return row is not None and row["relkind"] == "r"


_INDEXES = (  # name: definition, on the parent (each partition gets its own)
    ("request_events_token_ts_idx", "(token_id, ts)"),
    ("request_events_project_ts_idx", "(project_id, ts)"),
    ("request_events_ts_idx", "(ts)"),
    ("request_events_trace_id", "(trace_id) WHERE trace_id <> ''"),
)


async def convert(tx: Tx, policy: PartitionPolicy, now: datetime) -> None:
    """In the migration's transaction: catalog changes only when the table was prepared
    (``prepare``: its unique (event_id, ts) index and validated bound exist, so ATTACH proves
    the bound from the check and scans nothing). Unprepared and empty (a new database), the old
    table simply goes; unprepared with rows, both are built here, under the lock."""
    await tx.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    await tx.execute(f"LOCK TABLE {PARENT} IN ACCESS EXCLUSIVE MODE")
    await tx.execute("SET LOCAL lock_timeout TO DEFAULT")
    bound = await bound_check(tx)
    keep = True
    if bound is None:
        empty = await tx.fetchone(f"SELECT NOT EXISTS (SELECT 1 FROM {PARENT}) AS empty")
        keep = not (empty and empty["empty"])
    if keep and bound is None:
        bound = first_bound(now, policy.span)
        await tx.execute(f"ALTER TABLE {PARENT} DROP CONSTRAINT IF EXISTS {BOUND_CHECK}")
        await tx.execute(
            f"ALTER TABLE {PARENT} ADD CONSTRAINT {BOUND_CHECK} CHECK (ts < {_literal(bound)})"
        )
    if keep:
        valid = await tx.fetchone(
            "SELECT indisvalid AS ok FROM pg_index WHERE indexrelid = to_regclass(%s)",
            (KEY_INDEX,),
        )
        if not valid or not valid["ok"]:
            await tx.execute(f"DROP INDEX IF EXISTS {KEY_INDEX}")
            await tx.execute(f"CREATE UNIQUE INDEX {KEY_INDEX} ON {PARENT} (event_id, ts)")
    await tx.execute(f"ALTER TABLE {PARENT} RENAME TO {LEGACY}")
    for name, _ in _INDEXES:
        await tx.execute(f"ALTER INDEX {name} RENAME TO {LEGACY}{name.removeprefix(PARENT)}")
    # RETURNING cannot read xmax on a partitioned table: the write says what it did instead
    await tx.execute(
        f"ALTER TABLE {LEGACY} ADD COLUMN replaced_accepted boolean NOT NULL DEFAULT false"
    )
    await tx.execute(
        f"CREATE TABLE {PARENT} (LIKE {LEGACY} INCLUDING DEFAULTS) PARTITION BY RANGE (ts)"
    )
    await tx.execute(f"ALTER TABLE {LEGACY} DROP CONSTRAINT {PARENT}_pkey")
    await tx.execute(
        f"ALTER TABLE {PARENT} ADD CONSTRAINT {PARENT}_pkey PRIMARY KEY (event_id, ts)"
    )
    for name, definition in _INDEXES:
        await tx.execute(f"CREATE INDEX {name} ON {PARENT} {definition}")
    await tx.execute(f"CREATE TABLE {DEFAULT} PARTITION OF {PARENT} DEFAULT")
    if not keep:
        await tx.execute(f"DROP TABLE {LEGACY}")
        return
    assert bound is not None
    await tx.execute(
        f"ALTER TABLE {LEGACY} ADD CONSTRAINT {LEGACY}_pkey PRIMARY KEY USING INDEX {KEY_INDEX}"
    )
    await tx.execute(
        f"ALTER TABLE {PARENT} ATTACH PARTITION {LEGACY} "
        f"FOR VALUES FROM (MINVALUE) TO ({_literal(bound)})"
    )
    await tx.execute(f"ALTER TABLE {LEGACY} DROP CONSTRAINT {BOUND_CHECK}")


async def prepare(tx: Tx, policy: PartitionPolicy, now: datetime) -> None:
    """Before the migration's transaction, on an autocommit connection (each statement its own
    transaction, as CREATE INDEX CONCURRENTLY needs): what takes a scan of
    the pre-0014 table, done under locks that let writes go on. The unique (event_id, ts)
    index is built CONCURRENTLY; the bound check is added NOT VALID (new rows are checked at
    once) and then validated (SHARE UPDATE EXCLUSIVE: inserts and reads pass). Idempotent: a
    run cut short is resumed. Concurrent migrators take turns on the migration lock, polled so
    a waiter holds no snapshot the concurrent index build would wait for."""
    await _take_turn(tx)
    try:
        if not await is_plain_table(tx):
            return  # not created yet (a new database) or already partitioned
        valid = await tx.fetchone(
            "SELECT indisvalid AS ok FROM pg_index WHERE indexrelid = to_regclass(%s)",
            (KEY_INDEX,),
        )
        if valid is not None and not valid["ok"]:  # left invalid by an interrupted build
            await tx.execute(f"DROP INDEX CONCURRENTLY {KEY_INDEX}")
        if valid is None or not valid["ok"]:
            await tx.execute(
                f"CREATE UNIQUE INDEX CONCURRENTLY {KEY_INDEX} ON {PARENT} (event_id, ts)"
            )
        if await bound_check(tx) is None:
            exists = await tx.fetchone(
                "SELECT 1 AS one FROM pg_constraint WHERE conrelid = to_regclass(%s) "
                "AND conname = %s",
                (PARENT, BOUND_CHECK),
            )
            if exists is None:
                await tx.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
                bound = first_bound(now, policy.span)
                await tx.execute(
                    f"ALTER TABLE {PARENT} ADD CONSTRAINT {BOUND_CHECK} "
                    f"CHECK (ts < {_literal(bound)}) NOT VALID"
                )
                await tx.execute("SET lock_timeout TO DEFAULT")
            await tx.execute(f"ALTER TABLE {PARENT} VALIDATE CONSTRAINT {BOUND_CHECK}")
    finally:
        await tx.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))


async def _take_turn(tx: Tx) -> None:
    while True:
        row = await tx.fetchone("SELECT pg_try_advisory_lock(%s) AS ok", (MIGRATION_LOCK_KEY,))
        if row and row["ok"]:
            return
        await asyncio.sleep(1.0)
