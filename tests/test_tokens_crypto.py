"""Token generation, hashing and masking; encryption of upstream keys and its rotation."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.config import Settings
from shared.crypto import DecryptionError, Keyring, load_keyring, new_key
from shared.errors import ConfigError
from shared.logging import redact
from shared.tokens import (
    TOKEN_PREFIX,
    display_prefix,
    generate_token,
    hash_token,
    looks_like_token,
    mask_token,
)


def test_tokens_are_long_random_and_recognisable() -> None:
    tokens = {generate_token() for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert token.startswith(TOKEN_PREFIX)
        assert looks_like_token(token)
        assert len(token) == len(TOKEN_PREFIX) + 43


def test_hash_is_stable_and_not_the_token() -> None:
    token = generate_token()
    assert hash_token(token) == hash_token(token)
    assert len(hash_token(token)) == 64
    assert token[len(TOKEN_PREFIX) :] not in hash_token(token)


def test_mask_never_shows_a_whole_token() -> None:
    token = generate_token()
    masked = mask_token(token)
    assert masked.startswith(display_prefix(token))
    assert token not in masked
    assert len(masked) <= len(display_prefix(token)) + 1
    assert mask_token(None) == "(none)"
    assert mask_token("short") == "***"


@given(st.text())
def test_shape_check_rejects_arbitrary_text(text: str) -> None:
    if looks_like_token(text):
        assert text.startswith(TOKEN_PREFIX)


def test_redact_masks_tokens_bearer_and_upstream_keys() -> None:
    token = generate_token()
    line = f"auth {token} header Bearer abc.def key sk-proj-ABCDEFGHIJKLMNOP done"
    out = redact(line)
    assert token not in out
    assert "abc.def" not in out
    assert "ABCDEFGHIJKLMNOP" not in out
    assert out.endswith("done")


def test_encrypt_round_trip_and_ciphertext_hides_plaintext() -> None:
    ring = Keyring.from_text(new_key())
    secret = "sk-upstream-" + "x" * 40
    sealed = ring.encrypt(secret)
    assert sealed.startswith(f"v1.{ring.current_id}.")
    assert secret not in sealed
    assert ring.encrypt(secret) != sealed  # fresh nonce each time
    assert ring.decrypt(sealed) == secret


def test_wrong_key_or_tampering_fails_cleanly() -> None:
    ring = Keyring.from_text(new_key())
    sealed = ring.encrypt("secret")
    with pytest.raises(DecryptionError, match="not configured"):
        Keyring.from_text(new_key()).decrypt(sealed)
    tampered = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(DecryptionError):
        ring.decrypt(tampered)
    with pytest.raises(DecryptionError):
        ring.decrypt("garbage")


def test_rotation_reads_old_values_and_writes_new_ones() -> None:
    old, new = new_key(), new_key()
    sealed = Keyring.from_text(old).encrypt("secret")
    ring = Keyring.from_text(new, old)
    assert ring.needs_rotation(sealed)
    assert ring.decrypt(sealed) == "secret"
    assert not ring.needs_rotation(ring.encrypt("secret"))


@pytest.mark.parametrize("bad", ["short", "!!!notbase64!!!", "a" * 60])
def test_bad_encryption_key_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="ENCRYPTION_KEY must be 32 bytes"):
        Keyring.from_text(bad)


def test_embedded_default_generates_a_private_key_file_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings.from_env({"DATABASE_URL": str(tmp_path / "p.db")})
    first = load_keyring(settings)
    key_file = tmp_path / "p.db.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert "generated one into" in caplog.text
    caplog.clear()
    second = load_keyring(settings)
    assert second.current == first.current
    assert "generated" not in caplog.text


def test_postgres_refuses_to_start_without_a_key() -> None:
    settings = Settings.from_env({"DB_DRIVER": "postgres", "DATABASE_URL": "postgres://h/db"})
    with pytest.raises(ConfigError, match="ENCRYPTION_KEY must be set"):
        load_keyring(settings)
