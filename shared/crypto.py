"""Encryption of upstream API keys at rest: AES-256-GCM with versioned, key-tagged ciphertext.

Ciphertext format: ``v1.<kid>.<base64url(nonce || ciphertext+tag)>`` where ``kid`` is the first 8
hex digits of SHA-256 of the key. The kid lets a value written under an old key be read during a
rotation, and tells an operator which key a row needs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.config import Settings
from shared.errors import ConfigError, LLMProxyError

log = logging.getLogger("llm_proxy.crypto")

VERSION = "v1"
_NONCE_BYTES = 12
_AAD = b"llm-proxy upstream key"


class DecryptionError(LLMProxyError):
    code = "decryption_failed"
    default_message = "A stored secret could not be decrypted with the configured keys."


def new_key() -> str:
    """A fresh ENCRYPTION_KEY: 32 random bytes, URL-safe base64."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def _decode_key(text: str, name: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"{name} must be 32 bytes in URL-safe base64 (llm-proxy manage keys new)")
    return raw


def key_id(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:8]


@dataclass(frozen=True)
class Keyring:
    """The current key (encrypts) and older keys (decrypt only), by key id."""

    current: bytes
    old: tuple[bytes, ...] = ()

    @classmethod
    def from_text(cls, current: str, old: str = "") -> Keyring:
        olds = tuple(
            _decode_key(part, "ENCRYPTION_OLD_KEYS") for part in old.split(",") if part.strip()
        )
        return cls(_decode_key(current, "ENCRYPTION_KEY"), olds)

    @property
    def current_id(self) -> str:
        return key_id(self.current)

    def encrypt(self, plaintext: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = AESGCM(self.current).encrypt(nonce, plaintext.encode(), _AAD)
        body = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"{VERSION}.{self.current_id}.{body}"

    def decrypt(self, ciphertext: str) -> str:
        try:
            version, kid, body = ciphertext.split(".", 2)
        except ValueError:
            raise DecryptionError() from None
        if version != VERSION:
            raise DecryptionError()
        for raw in (self.current, *self.old):
            if key_id(raw) == kid:
                break
        else:
            raise DecryptionError(
                f"A stored secret was encrypted with key {kid}, which is not configured "
                "(set it in ENCRYPTION_OLD_KEYS)."
            )
        try:
            blob = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            return AESGCM(raw).decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], _AAD).decode()
        except (InvalidTag, binascii.Error, ValueError):
            raise DecryptionError() from None

    def needs_rotation(self, ciphertext: str) -> bool:
        return ciphertext.split(".", 2)[1:2] != [self.current_id]


def load_keyring(settings: Settings) -> Keyring:
    """The keyring for this process. On SQLite without ENCRYPTION_KEY, create or reuse a key file
    (mode 0600) and say so once; on Postgres refuse to start without ENCRYPTION_KEY."""
    old = settings.encryption_old_keys.get()
    if settings.encryption_key:
        return Keyring.from_text(settings.encryption_key.get(), old)
    if settings.db_driver == "postgres":
        raise ConfigError(
            "ENCRYPTION_KEY must be set when DB_DRIVER=postgres (generate one with "
            "`llm-proxy manage keys new`)"
        )
    path = settings.encryption_key_file or settings.sqlite_path + ".key"
    try:
        with open(path, encoding="ascii") as fh:
            return Keyring.from_text(fh.read(), old)
    except FileNotFoundError:
        pass
    key = new_key()
    # Write a private temp file, then link it into place: two processes starting at once agree
    # on one key, and nobody ever reads a half-written file.
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(key + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        with open(path, encoding="ascii") as fh:
            return Keyring.from_text(fh.read(), old)
    finally:
        os.unlink(tmp)
    log.warning(
        "no ENCRYPTION_KEY set: generated one into %s (mode 0600); back it up, or set "
        "ENCRYPTION_KEY, before storing real upstream keys",
        path,
    )
    return Keyring.from_text(key, old)
