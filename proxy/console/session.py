"""Console sign-in: signed expiring session cookies, session-bound CSRF tokens, login throttling.

A session is ``base64url(json) "." base64url(HMAC-SHA256)``; the JSON holds a random session id
and the expiry. The key is derived from MANAGEMENT_TOKEN (docs/decisions.md "Console sessions"),
so every worker and instance accepts the same cookie, and rotating the token signs every console
out. A form's CSRF token is an HMAC of the session id under the same key: it cannot be guessed
without the cookie, and needs no server-side state.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from proxy.limits.clientip import TrustedProxies

SESSION_COOKIE = "llm_proxy_console"
LOGIN_COOKIE = "llm_proxy_console_login"  # the login form's double-submit nonce
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    expires_at: float


class SessionSigner:
    """Issues and checks session cookies and CSRF tokens under one key."""

    def __init__(self, management_token: str, ttl: float) -> None:
        # a key of its own, so a console cookie can never be replayed as anything else
        self._key = hmac.new(
            management_token.encode(), b"llm-proxy console session v1", hashlib.sha256
        ).digest()
        self.ttl = ttl

    def _mac(self, purpose: bytes, payload: bytes) -> bytes:
        return hmac.new(self._key, purpose + b"\0" + payload, hashlib.sha256).digest()

    def issue(self, now: float | None = None) -> tuple[str, Session]:
        now = time.time() if now is None else now
        session = Session(secrets.token_urlsafe(18), now + self.ttl)
        payload = json.dumps(
            {"sid": session.session_id, "exp": int(session.expires_at)}, separators=(",", ":")
        ).encode()
        return f"{_b64(payload)}.{_b64(self._mac(b'session', payload))}", session

    def read(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session a cookie proves, or None when it is absent, forged or expired."""
        if not cookie or cookie.count(".") != 1 or len(cookie) > 512:
            return None
        body, mac = cookie.split(".")
        try:
            payload = _unb64(body)
            if not hmac.compare_digest(_unb64(mac), self._mac(b"session", payload)):
                return None
            data = json.loads(payload)
            session = Session(str(data["sid"]), float(data["exp"]))
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires_at <= (time.time() if now is None else now):
            return None
        return session

    def csrf_token(self, session: Session) -> str:
        return _b64(self._mac(b"csrf", session.session_id.encode()))

    def csrf_ok(self, session: Session, presented: str | None) -> bool:
        if not presented:
            return False
        return hmac.compare_digest(presented.encode(), self.csrf_token(session).encode())

    def login_nonce(self) -> str:
        """The login form's nonce: the same random value in a cookie and in a hidden field."""
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{_b64(self._mac(b'login', nonce.encode()))}"

    def login_nonce_ok(self, cookie: str | None, field: str | None) -> bool:
        if not cookie or not field or not hmac.compare_digest(cookie.encode(), field.encode()):
            return False
        nonce, _, mac = cookie.partition(".")
        try:
            return hmac.compare_digest(_unb64(mac), self._mac(b"login", nonce.encode()))
        except ValueError:
            return False


class LoginThrottle:
    """Failed sign-ins per client address in a sliding window; past ``limit`` the address waits.

    Counted per worker: with W workers an address gets at most W × ``limit`` guesses a window,
    which against a 32-byte token is still nothing (docs/console.md)."""

    def __init__(self, limit: int = 5, window: float = 300.0, capacity: int = 10_000) -> None:
        self.limit = limit
        self.window = window
        self._capacity = capacity
        self._failures: OrderedDict[str, list[float]] = OrderedDict()

    def retry_after(self, address: str, now: float | None = None) -> float:
        """Seconds the address must wait before trying again (0: it may try now)."""
        now = time.monotonic() if now is None else now
        recent = [t for t in self._failures.get(address, ()) if t > now - self.window]
        if len(recent) < self.limit:
            return 0.0
        return recent[-self.limit] + self.window - now

    def failed(self, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        recent = [t for t in self._failures.pop(address, []) if t > now - self.window]
        self._failures[address] = [*recent, now][-self.limit :]
        while len(self._failures) > self._capacity:  # bounded against address floods
            self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)


def request_is_https(
    scheme: str, peer: str | None, forwarded_proto: str | None, trusted: TrustedProxies
) -> bool:
    """Whether the browser reached us over https: the socket's scheme, or X-Forwarded-Proto when
    the peer is one of TRUSTED_PROXIES (anyone else could claim it)."""
    if scheme == "https":
        return True
    if not forwarded_proto or not peer:
        return False
    if not trusted.trusts_peer(peer):
        return False
    return forwarded_proto.split(",")[0].strip().lower() == "https"
