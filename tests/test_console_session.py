"""Console sessions, CSRF tokens, the sign-in throttle and the https test, as pure functions."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.console.session import LoginThrottle, SessionSigner, request_is_https
from proxy.limits.clientip import TrustedProxies

KEY = "management-token-for-session-tests"


def test_a_session_is_accepted_until_it_expires() -> None:
    signer = SessionSigner(KEY, ttl=3600)
    cookie, session = signer.issue(now=1000.0)
    assert signer.read(cookie, now=1000.0) == session
    assert signer.read(cookie, now=4599.0) == session
    assert signer.read(cookie, now=4600.0) is None
    assert KEY not in cookie


def test_a_session_signed_under_another_token_is_refused() -> None:
    cookie, _ = SessionSigner("an-older-management-token", ttl=3600).issue()
    assert SessionSigner(KEY, ttl=3600).read(cookie) is None  # rotating the token signs out


@given(st.text(max_size=600))
def test_no_forged_cookie_is_a_session(cookie: str) -> None:
    assert SessionSigner(KEY, ttl=3600).read(cookie) is None


@given(st.integers(0, 200), st.characters(codec="ascii"))
def test_a_changed_cookie_is_refused(position: int, char: str) -> None:
    signer = SessionSigner(KEY, ttl=3600)
    cookie, _ = signer.issue()
    i = position % len(cookie)
    changed = cookie[:i] + char + cookie[i + 1 :]
    if changed != cookie:
        assert signer.read(changed) is None


def test_csrf_tokens_belong_to_their_session() -> None:
    signer = SessionSigner(KEY, ttl=3600)
    _, one = signer.issue()
    _, two = signer.issue()
    assert signer.csrf_ok(one, signer.csrf_token(one))
    assert not signer.csrf_ok(one, signer.csrf_token(two))
    assert not signer.csrf_ok(one, "")
    assert not signer.csrf_ok(one, None)


def test_the_login_nonce_must_match_its_cookie_and_be_ours() -> None:
    signer = SessionSigner(KEY, ttl=3600)
    nonce = signer.login_nonce()
    assert signer.login_nonce_ok(nonce, nonce)
    assert not signer.login_nonce_ok(nonce, signer.login_nonce())
    assert not signer.login_nonce_ok(None, nonce)
    forged = "chosen-by-attacker.AAAA"
    assert not signer.login_nonce_ok(forged, forged)


def test_the_throttle_counts_failures_per_address_in_a_window() -> None:
    throttle = LoginThrottle(limit=3, window=60)
    for t in (0.0, 1.0, 2.0):
        assert throttle.retry_after("10.0.0.1", now=t) == 0
        throttle.failed("10.0.0.1", now=t)
    assert throttle.retry_after("10.0.0.1", now=3.0) == 57.0
    assert throttle.retry_after("10.0.0.2", now=3.0) == 0  # another address is not held
    assert throttle.retry_after("10.0.0.1", now=60.5) == 0  # the oldest failure aged out
    throttle.succeeded("10.0.0.1")
    assert throttle.retry_after("10.0.0.1", now=3.0) == 0


def test_the_throttle_stays_bounded_under_an_address_flood() -> None:
    throttle = LoginThrottle(limit=2, window=60, capacity=100)
    for i in range(1000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}", now=0.0)
    assert len(throttle._failures) == 100


def test_https_is_believed_only_from_a_trusted_proxy() -> None:
    trusted = TrustedProxies.parse(["10.0.0.0/8"])
    assert request_is_https("https", "192.0.2.1", None, trusted)
    assert request_is_https("http", "10.1.2.3", "https", trusted)
    assert request_is_https("http", "10.1.2.3", "https, http", trusted)
    assert not request_is_https("http", "192.0.2.1", "https", trusted)
    assert not request_is_https("http", "10.1.2.3", "http", trusted)
    assert not request_is_https("http", None, "https", trusted)
