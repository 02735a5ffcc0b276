"""The budget_buckets table: reservations taken before forwarding and settled after, decided
by the database in one transaction per request (the arbiter for every worker and instance)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from shared.money.amounts import usd_to_picos
from shared.money.budgets import Window
from shared.store.models import Governed, Project, Token
from shared.store.rows import Tables, Tx


@dataclass(frozen=True, slots=True)
class BudgetLimit:
    """One budget that applies to a request: an owner's limit over a window. A limit of None
    is not checked (a dollar budget without a token budget, or the reverse)."""

    owner_id: str
    window: Window
    picos: int | None = None
    tokens: int | None = None
    hard: bool = True
    tpm: bool = False  # the token's tokens per minute, not a budget


@dataclass(frozen=True, slots=True)
class Held:
    """A reservation: what was added to which bucket, to be settled."""

    owner_id: str
    window_key: str
    bucket: datetime
    picos: int
    tokens: int
    #: the Redis counter it was taken in and that counter's generation
    #: (proxy/budgets/redis.py); None: taken in the database
    key: str | None = None
    gen: str = ""


#: (owner, window key, bucket start, reserved picos, spent picos, reserved tokens, spent tokens)
BucketChange = tuple[str, str, datetime, int, int, int, int]


@dataclass(slots=True)
class Decision:
    """The outcome of a reservation: ``refused`` the hard budget that would be exceeded (then
    nothing was reserved), ``exceeded`` the soft ones; ``held`` what to settle; ``used`` per
    budget, the spend and reservations counted before this request (picos, tokens)."""

    held: list[Held]
    used: list[tuple[int, int]]
    refused: BudgetLimit | None = None
    exceeded: list[BudgetLimit] | None = None


@dataclass(frozen=True, slots=True)
class Spend:
    """One budget's counters in its current window: what settled requests cost and what the
    requests still in flight hold reserved (their estimates)."""

    spent_picos: int = 0
    spent_tokens: int = 0
    reserved_picos: int = 0
    reserved_tokens: int = 0


def limits_of(token: Token, project: Project) -> tuple[BudgetLimit, ...]:
    """The budgets and TPM limit a token's requests are held to (built once per credential)."""
    return (*owner_limits(token.id, token), *owner_limits(project.id, project))


def owner_limits(owner_id: str, owner: Governed) -> list[BudgetLimit]:
    """An owner's own budget and, for a token, its tokens per minute."""
    out = []
    if owner.budget_usd is not None or owner.budget_tokens is not None:
        out.append(_budget(owner_id, owner))
    if isinstance(owner, Token) and owner.tpm:
        out.append(BudgetLimit(owner_id, Window("1m"), tokens=owner.tpm, tpm=True))
    return out


def _budget(owner_id: str, owner: Governed) -> BudgetLimit:
    return BudgetLimit(
        owner_id,
        Window(owner.budget_window or "1mo", bool(owner.budget_calendar)),
        picos=usd_to_picos(owner.budget_usd) if owner.budget_usd is not None else None,
        tokens=owner.budget_tokens,
        hard=owner.budget_mode != "soft",
    )


_USED_SQL = (
    "SELECT COALESCE(SUM(reserved_picos + spent_picos), 0) AS picos, "
    "COALESCE(SUM(reserved_tokens + spent_tokens), 0) AS tokens FROM budget_buckets "
    "WHERE owner_id = %s AND window_key = %s AND bucket_start >= %s"
)
_SPEND_SQL = (
    "SELECT COALESCE(SUM(spent_picos), 0) AS spent_picos, "
    "COALESCE(SUM(spent_tokens), 0) AS spent_tokens, "
    "COALESCE(SUM(reserved_picos), 0) AS reserved_picos, "
    "COALESCE(SUM(reserved_tokens), 0) AS reserved_tokens FROM budget_buckets "
    "WHERE owner_id = %s AND window_key = %s AND bucket_start >= %s"
)
_BUCKETS_SQL = (
    "SELECT bucket_start, reserved_picos + spent_picos AS picos, "
    "reserved_tokens + spent_tokens AS tokens FROM budget_buckets "
    "WHERE owner_id = %s AND window_key = %s AND bucket_start >= %s"
)
_ADD_SQL = (
    "INSERT INTO budget_buckets (owner_id, window_key, bucket_start, reserved_picos, "
    "spent_picos, reserved_tokens, spent_tokens) VALUES (%s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (owner_id, window_key, bucket_start) DO UPDATE SET "
    "reserved_picos = budget_buckets.reserved_picos + excluded.reserved_picos, "
    "spent_picos = budget_buckets.spent_picos + excluded.spent_picos, "
    "reserved_tokens = budget_buckets.reserved_tokens + excluded.reserved_tokens, "
    "spent_tokens = budget_buckets.spent_tokens + excluded.spent_tokens"
)
_RESERVE_SQL = (
    "INSERT INTO budget_buckets (owner_id, window_key, bucket_start, reserved_picos, "
    "reserved_tokens) VALUES (%s, %s, %s, %s, %s) "
    "ON CONFLICT (owner_id, window_key, bucket_start) DO UPDATE SET "
    "reserved_picos = budget_buckets.reserved_picos + excluded.reserved_picos, "
    "reserved_tokens = budget_buckets.reserved_tokens + excluded.reserved_tokens"
)
_SETTLE_SQL = (
    "UPDATE budget_buckets SET reserved_picos = reserved_picos - %s, "
    "spent_picos = spent_picos + %s, reserved_tokens = reserved_tokens - %s, "
    "spent_tokens = spent_tokens + %s "
    "WHERE owner_id = %s AND window_key = %s AND bucket_start = %s"
)


class Budgets(Tables):
    async def lock_owner(self, tx: Tx, owner_id: str) -> None:
        """Serialise reservations of one owner (SQLite's BEGIN IMMEDIATE already does)."""

    async def reserve(
        self, limits: Sequence[BudgetLimit], picos: int, tokens: int, now: datetime
    ) -> Decision:
        """Admit a request whose cost is at most ``picos`` and ``tokens`` against every budget
        in ``limits`` at once: a request is refused only when a hard budget is already spent
        (used >= limit), so the spend can pass a limit by at most one request's estimate.
        All budgets are reserved, or (refused) none."""
        ordered = sorted(limits, key=lambda b: (b.owner_id, b.window.key))
        async with self.transaction() as tx:
            for owner in sorted({b.owner_id for b in ordered}):
                await self.lock_owner(tx, owner)
            used: list[tuple[int, int]] = []
            exceeded: list[BudgetLimit] = []
            for b in ordered:
                row = await tx.fetchone(_USED_SQL, (b.owner_id, b.window.key, b.window.start(now)))
                spent = (int(row["picos"]), int(row["tokens"])) if row else (0, 0)
                used.append(spent)
                over = (b.picos is not None and spent[0] >= b.picos) or (
                    b.tokens is not None and spent[1] >= b.tokens
                )
                if over and b.hard:
                    return Decision([], used, refused=b)
                if over:
                    exceeded.append(b)
            held = []
            for b in ordered:
                bucket = b.window.bucket(now)
                await tx.execute(_RESERVE_SQL, (b.owner_id, b.window.key, bucket, picos, tokens))
                held.append(Held(b.owner_id, b.window.key, bucket, picos, tokens))
        return Decision(held, used, exceeded=exceeded)

    async def settle(self, held: Sequence[Held], picos: int, tokens: int) -> None:
        """Replace the reservations with what the request actually cost."""
        if not held:
            return
        async with self.transaction() as tx:
            for h in held:
                await tx.execute(
                    _SETTLE_SQL,
                    (h.picos, picos, h.tokens, tokens, h.owner_id, h.window_key, h.bucket),
                )

    async def budget_used(self, owner_id: str, window: Window, now: datetime) -> tuple[int, int]:
        """Spent plus reserved (picos, tokens) in the window at ``now``."""
        spend = await self.budget_spend(owner_id, window, now)
        return (
            spend.spent_picos + spend.reserved_picos,
            spend.spent_tokens + spend.reserved_tokens,
        )

    async def budget_spend(self, owner_id: str, window: Window, now: datetime) -> Spend:
        """Spent and reserved, apart, in the window at ``now``."""
        async with self.transaction(readonly=True) as tx:
            row = await tx.fetchone(_SPEND_SQL, (owner_id, window.key, window.start(now)))
        if row is None:
            return Spend()
        return Spend(*(int(row[k]) for k in Spend.__dataclass_fields__))

    async def budget_buckets(
        self, owner_id: str, window: Window, now: datetime
    ) -> list[tuple[datetime, int, int]]:
        """(bucket start, picos, tokens) spent plus reserved, of each bucket counting at
        ``now``: what Redis counters are seeded from."""
        async with self.transaction(readonly=True) as tx:
            rows = await tx.fetchall(_BUCKETS_SQL, (owner_id, window.key, window.start(now)))
        return [(_aware(r["bucket_start"]), int(r["picos"]), int(r["tokens"])) for r in rows]

    async def add_to_buckets(self, changes: Sequence[BucketChange]) -> None:
        """Add what was reserved and spent (owner, window key, bucket, reserved picos, spent
        picos, reserved tokens, spent tokens) in one transaction: the durable record of
        reservations and settlements decided in Redis."""
        if not changes:
            return
        async with self.transaction() as tx:
            for row in sorted(changes):  # one order for every writer: no deadlock between them
                await tx.execute(_ADD_SQL, row)


def _aware(value: datetime | str) -> datetime:
    """A bucket start as stored (SQLite gives text back) as an aware UTC datetime."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
