"""Server lifecycle: graceful SIGTERM with a stream open, and start-up checks."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.proxy_process import ProxyProcess, provision
from tests.test_proxy_forwarding import Target, wait_for_events
from tests.upstream_fake import FakeUpstream


def test_sigterm_lets_an_open_stream_finish_and_records_it(tmp_path: Path) -> None:
    fake = FakeUpstream().start()
    try:
        creds = provision({}, tmp_path, fake.base_url)
        proxy = ProxyProcess(env={}, cwd=tmp_path, workers=1).start()
        target = Target("sigterm", proxy, creds, {}, tmp_path)
        received: list[str] = []

        def client() -> None:
            with httpx.stream(
                "POST",
                f"{proxy.url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {creds.token}", "X-Request-ID": "drain-1"},
                json={"model": "hold", "messages": [], "stream": True},
                timeout=30,
            ) as resp:
                received.extend(line for line in resp.iter_lines() if line)

        thread = threading.Thread(target=client)
        thread.start()
        deadline = time.monotonic() + 10
        while not fake.requests:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.2)  # the first chunk is on its way; the upstream holds the rest
        proxy.signal(signal.SIGTERM)
        time.sleep(0.5)
        # draining: no new connections are accepted
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{proxy.url}/live", timeout=1)
        fake.release.set()
        thread.join(timeout=20)
        assert received[-1] == "data: [DONE]"
        assert len(received) == 6
        assert proxy.proc is not None
        assert proxy.proc.wait(timeout=20) == 0
        [event] = wait_for_events(target, "drain-1")
        assert event.status == 200 and event.stream and event.error == ""
        assert event.completion_tokens == 5
    finally:
        fake.stop()


def test_server_refuses_bad_settings_in_one_line(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "admin", "server"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PORT": "eighty"},
        timeout=30,
    )
    assert out.returncode == 1
    assert out.stderr.strip() == "error: PORT must be an integer >= 1, got 'eighty'"
    out = subprocess.run(
        [sys.executable, "-m", "admin", "server"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={
            "PATH": "/usr/bin:/bin",
            "DB_DRIVER": "postgres",
            "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/test",
        },
        timeout=30,
    )
    assert out.returncode == 1
    assert "ENCRYPTION_KEY must be set" in out.stderr
