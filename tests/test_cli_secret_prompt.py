"""A secret typed at a terminal is not echoed: ``--api-key-stdin`` on a real pseudo-terminal."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import time
from pathlib import Path

from shared.crypto import new_key

KEY = "sk-upstream-TYPED-0123456789abcdef"


def test_a_key_typed_at_a_terminal_is_not_echoed(tmp_path: Path) -> None:
    parent, child = pty.openpty()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DATABASE_URL": str(tmp_path / "p.db"),
        "ENCRYPTION_KEY": new_key(),
    }
    subprocess.run([sys.executable, "-m", "admin", "migrate"], env=env, check=True, cwd=tmp_path)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "admin",
            "manage",
            "project",
            "create",
            "--name",
            "tty",
            "--api-key-stdin",
            "--json",
        ],
        stdin=child,
        stdout=child,
        stderr=child,
        env=env,
        cwd=tmp_path,
    )
    os.close(child)
    seen = b""
    deadline = time.monotonic() + 60
    while b"api key:" not in seen.lower():  # the prompt, then type the key
        assert time.monotonic() < deadline and proc.poll() is None, seen
        seen += os.read(parent, 1024)
    os.write(parent, KEY.encode() + b"\n")
    while proc.poll() is None or _readable(parent):
        try:
            chunk = os.read(parent, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
        assert time.monotonic() < deadline, seen
    os.close(parent)
    assert proc.wait(timeout=60) == 0, seen
    assert b'"name": "tty"' in seen
    assert KEY.encode() not in seen  # neither echoed nor printed


def _readable(fd: int) -> bool:
    import select

    return bool(select.select([fd], [], [], 0.1)[0])
