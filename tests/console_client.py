"""Signing in to the console over plain HTTP (httpx), the way a browser's form post does."""

from __future__ import annotations

import re

import httpx

_HIDDEN_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def hidden_csrf(html: str) -> str:
    """The CSRF field of the first form on a page."""
    match = _HIDDEN_CSRF.search(html)
    assert match is not None, "no CSRF field on the page"
    return match.group(1)


def login_page(client: httpx.Client, base: str, **headers: str) -> str:
    """Open the sign-in page (its nonce cookie lands in the client); the form's nonce."""
    page = client.get(f"{base}/console/login", headers=headers)
    assert page.status_code == 200, page.text
    return hidden_csrf(page.text)


def sign_in(client: httpx.Client, base: str, token: str, **headers: str) -> httpx.Response:
    nonce = login_page(client, base, **headers)
    return client.post(
        f"{base}/console/login", data={"csrf": nonce, "token": token}, headers=headers
    )


def signed_in(base: str, token: str) -> httpx.Client:
    """A client holding a console session."""
    client = httpx.Client(timeout=30)
    answer = sign_in(client, base, token)
    assert answer.status_code == 303, answer.text
    return client
