"""`llm-proxy apply --prune` at a real terminal asks before revoking, and a "no" changes nothing."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from shared.crypto import new_key

FILE = "projects:\n  - name: p\n    api_key_env: K\n    tokens:\n      - label: keep\n"


def _at_terminal(args: list[str], env: dict[str, str], cwd: Path, answer: bytes) -> tuple[int, str]:
    """Run the CLI on a pseudo-terminal, answer its question, return (exit code, all it wrote)."""
    parent, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "admin", *args], stdin=child, stdout=child, stderr=child,
        env=env, cwd=cwd,
    )  # fmt: skip
    os.close(child)
    seen = b""
    deadline = time.monotonic() + 60
    while b"[y/N]" not in seen:
        assert time.monotonic() < deadline and proc.poll() is None, seen
        seen += os.read(parent, 1024)
    os.write(parent, answer + b"\n")
    while True:
        if not select.select([parent], [], [], 0.1)[0]:
            if proc.poll() is not None:
                break
            assert time.monotonic() < deadline, seen
            continue
        try:
            chunk = os.read(parent, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(parent)
    return proc.wait(timeout=60), seen.decode()


def _states(listed: list[str], env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run(listed, env=env, capture_output=True, text=True, check=True).stdout
    return {t["label"]: t["state"] for t in json.loads(out)}


def test_prune_asks_at_a_terminal(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DATABASE_URL": str(tmp_path / "p.db"),
        "ENCRYPTION_KEY": new_key(),
        "K": "sk-upstream-PROMPT-0123456789",
    }
    subprocess.run([sys.executable, "-m", "admin", "migrate"], env=env, check=True, cwd=tmp_path)
    state = tmp_path / "state.yaml"
    state.write_text(FILE + "      - label: drop\n")
    apply = [sys.executable, "-m", "admin", "apply", "-f", str(state)]
    subprocess.run(apply, env=env, check=True, cwd=tmp_path, capture_output=True)
    state.write_text(FILE)

    code, seen = _at_terminal(["apply", "-f", str(state), "--prune"], env, tmp_path, b"n")
    assert code == 1 and "- revoke token p/drop" in seen and "error: nothing changed" in seen
    listed = [sys.executable, "-m", "admin", "manage", "token", "list", "--json"]
    assert _states(listed, env) == {"keep": "active", "drop": "active"}

    code, seen = _at_terminal(["apply", "-f", str(state), "--prune"], env, tmp_path, b"y")
    assert code == 0 and "applied 1 change(s)" in seen
    again = subprocess.run(apply, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert again.stdout.strip() == "no changes"
    assert _states(listed, env) == {"keep": "active", "drop": "revoked"}
