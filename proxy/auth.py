"""Token authentication with a per-worker LRU+TTL cache that revocations invalidate."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from proxy.limits import TokenLimits
from proxy.upstream.failover import Target
from proxy.upstream.providers import NO_DEPLOYMENTS, Deployments, Provider, provider_of
from shared.crypto import Keyring
from shared.errors import AuthError, Unavailable, UserError
from shared.scopes import ModelScope
from shared.store import SqlStore, TokenAuth
from shared.store.budgets import BudgetLimit, limits_of
from shared.tokens import hash_token, looks_like_token, mask_token

log = logging.getLogger("llm_proxy.auth")


@dataclass(frozen=True, slots=True)
class Credential:
    """What the rest of the request needs once a token is accepted."""

    token_id: str
    project_id: str
    base_url: str
    api_key: str  # the project's upstream key, decrypted; never logged
    expires_at: float | None  # epoch seconds
    max_requests: int | None
    token_active: bool
    project_active: bool
    limits: TokenLimits
    provider: Provider
    #: the project's enabled upstreams when it has several (docs/providers.md); empty: its
    #: own base URL and key, the one-upstream path
    upstreams: tuple[Target, ...] = ()
    #: the token's and the project's model scopes (a model must be in both); None: any model
    models: ModelScope | None = None
    #: the token's and the project's budgets and the token's TPM limit (proxy/budgets.py)
    budgets: tuple[BudgetLimit, ...] = ()
    #: azure-openai: the project's own deployment table and api-version
    deployments: Deployments = NO_DEPLOYMENTS

    @classmethod
    def from_row(cls, row: TokenAuth, keyring: Keyring) -> Credential:
        token, project = row.token, row.project
        return cls(
            token_id=token.id,
            project_id=project.id,
            base_url=project.base_url,
            api_key=keyring.decrypt(project.api_key_enc),
            expires_at=token.expires_at.timestamp() if token.expires_at else None,
            max_requests=token.max_requests,
            token_active=token.is_active and token.revoked_at is None,
            project_active=project.is_active,
            limits=TokenLimits.of(token),
            provider=provider_of(project.kind),
            upstreams=tuple(
                Target(
                    u.id,
                    provider_of(u.kind),
                    u.base_url,
                    keyring.decrypt(u.api_key_enc),
                    u.weight,
                    u.priority,
                    Deployments.of(u.deployments, u.api_version),
                )
                for u in row.upstreams
                if u.enabled
            ),
            models=ModelScope.of(token.models, project.models),
            budgets=limits_of(token, project),
            deployments=Deployments.of(project.deployments, project.api_version),
        )

    def refusal(self, now: float) -> str | None:
        """Why this credential may not be used now (for the log), or None."""
        if not self.token_active:
            return "token revoked or inactive"
        if not self.project_active:
            return "project inactive"
        if self.expires_at is not None and self.expires_at <= now:
            return "token expired"
        return None


def token_from_headers(
    authorization: bytes | None, api_key: bytes | None, repeated: bool = False
) -> str | None:
    """``Authorization: Bearer <token>``, else the ``api-key``/``x-api-key`` header.

    ``repeated``: the request carried Authorization twice, or two different api-key headers.
    That, or an api-key naming another token than Authorization, is refused (400, as nginx
    refuses a duplicate Authorization): which credential counts must never depend on order."""
    if repeated:
        raise UserError("Send one credential: more than one credential header was given.")
    if authorization:
        scheme, _, value = authorization.partition(b" ")
        token = value.strip()
        if api_key is not None and api_key.strip() != token:
            raise UserError("Send one credential: Authorization and api-key name different tokens.")
        if scheme.lower() == b"bearer" and token:
            return token.decode("latin-1")
        return None
    if api_key:
        return api_key.strip().decode("latin-1")
    return None


class TokenCache:
    """Token hash → credential (or None for an unknown token), LRU-bounded, each entry trusted
    for ``ttl`` seconds. Unknown tokens are cached too, so garbage cannot hammer the database.

    A credential is kept up to ``outage_ttl`` seconds after the database confirmed it, for use
    while the database cannot be reached (``usable_in_outage``); the normal path never sees an
    entry older than ``ttl``."""

    def __init__(self, size: int, ttl: float, outage_ttl: float = 0.0) -> None:
        self.size = size
        self.ttl = ttl
        self.outage_ttl = max(ttl, outage_ttl)
        #: when the database last confirmed a credential (any token): /ready's "can serve"
        self.confirmed_at: float | None = None
        self._entries: OrderedDict[str, tuple[Credential | None, float]] = OrderedDict()

    def get(self, key: str, now: float) -> tuple[bool, Credential | None]:
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        age = now - entry[1]
        if age > self.ttl:
            if age > self.outage_ttl or entry[0] is None:
                del self._entries[key]
            return False, None
        self._entries.move_to_end(key)
        return True, entry[0]

    def usable_in_outage(self, key: str, now: float) -> Credential | None:
        """The cached credential, if the database confirmed it within ``outage_ttl``."""
        entry = self._entries.get(key)
        if entry is None or now - entry[1] > self.outage_ttl:
            return None
        return entry[0]

    def can_serve_in_outage(self, now: float) -> bool:
        """Whether some cached credential is still young enough to serve without the database."""
        return self.confirmed_at is not None and now - self.confirmed_at <= self.outage_ttl

    def put(self, key: str, value: Credential | None, now: float) -> None:
        if self.size <= 0:
            return
        self._entries[key] = (value, now)
        self._entries.move_to_end(key)
        if value is not None:
            self.confirmed_at = now
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def drop(self, kind: str, target_id: str) -> int:
        """Forget entries of a token or project; returns how many were dropped."""
        doomed = [
            key
            for key, (cred, _) in self._entries.items()
            if cred is not None
            and (cred.token_id if kind == "token" else cred.project_id) == target_id
        ]
        for key in doomed:
            del self._entries[key]
        return len(doomed)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class StoreHealth:
    """Whether the token store answered its last query. Token lookups, the change-log poll and
    /ready report to it; while it is down, lookups use cached credentials at once instead of
    queueing for a pool that cannot connect."""

    def __init__(self) -> None:
        self.down_since: float | None = None

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, now: float, exc: BaseException) -> None:
        if self.down_since is None:
            self.down_since = now
            log.error(
                "token store unreachable (%s); serving cached credentials while they last",
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )

    def answered(self, now: float) -> None:
        if self.down_since is not None:
            log.info("token store reachable again after %.1fs", now - self.down_since)
            self.down_since = None


class Authenticator:
    def __init__(
        self,
        store: SqlStore,
        keyring: Keyring,
        cache: TokenCache,
        health: StoreHealth | None = None,
    ) -> None:
        self.store = store
        self.keyring = keyring
        self.cache = cache
        self.health = health or StoreHealth()
        self.failures = 0
        self._inflight: dict[str, asyncio.Future[Credential | None]] = {}

    async def authenticate(self, token: str | None) -> Credential:
        """The credential for ``token``, or AuthError. The client never learns which check
        failed; the log does, with the token masked."""
        now = time.time()
        if token is None or not looks_like_token(token):
            raise self._refuse(token, "missing or malformed token")
        key = hash_token(token)
        found, cred = self.cache.get(key, now)
        if not found:
            cred = await self._load(key, now)
        if cred is None:
            raise self._refuse(token, "unknown token")
        reason = cred.refusal(now)
        if reason is not None:
            raise self._refuse(token, reason)
        return cred

    def _refuse(self, token: str | None, reason: str) -> AuthError:
        self.failures += 1
        log.info("auth refused: %s (token %s)", reason, mask_token(token))
        return AuthError()

    async def _load(self, key: str, now: float) -> Credential | None:
        """One database lookup per token hash at a time, however many requests wait for it.
        While the store is unreachable, a credential it confirmed within the outage TTL is
        used as it was (see docs/operations.md, "Database outage")."""
        waiting = self._inflight.get(key)
        if waiting is not None:
            return await asyncio.shield(waiting)
        kept = self.cache.usable_in_outage(key, now)
        if kept is not None and self.health.down:
            return kept  # no lookup: it would only wait out the pool timeout
        future: asyncio.Future[Credential | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            try:
                row = await self._find(key, retry=kept is None)
            except Exception as exc:
                self.health.failed(time.time(), exc)
                if kept is not None:
                    cred: Credential | None = kept
                else:
                    log.error("token lookup failed: %s", exc)
                    raise Unavailable("The token store is unavailable.") from None
            else:
                self.health.answered(time.time())
                cred = Credential.from_row(row, self.keyring) if row else None
                self.cache.put(key, cred, now)
            future.set_result(cred)
            return cred
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else need
            raise
        finally:
            del self._inflight[key]

    async def _find(self, key: str, *, retry: bool) -> TokenAuth | None:
        """The lookup, retried once when it met a pooled connection the server had closed
        (a restarted or killed backend): the pool is checked first, so the retry gets a live
        connection rather than the next dead one. Without ``retry`` (a cached credential can
        answer instead) the error is raised at once: if the server is really down, a retry
        would wait out the pool timeout first."""
        try:
            return await self.store.find_token(key)
        except Exception as exc:
            if not retry or not self.store.lost_connection(exc):
                raise
            log.warning("token lookup met a broken database connection; retrying once")
        await self.store.drop_broken_connections()
        return await self.store.find_token(key)
