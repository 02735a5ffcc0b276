"""`bench/validate` against a running proxy: targets met pass, a missed target exits 1."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import procs
from tests.proxy_process import UNLIMITED, ProxyProcess, provision

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, str]]:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed")  # .ci/run installs it
    tmp = tmp_path_factory.mktemp("validate")
    port = procs.free_port()
    argv = [sys.executable, "-m", "bench.fake_upstream", "--port", str(port)]
    with procs.running(procs.start("upstream", argv, tmp, port=port)):
        creds = provision(UNLIMITED, tmp, f"http://127.0.0.1:{port}/v1")
        proxy = ProxyProcess(env=UNLIMITED, cwd=tmp, workers=1).start()
        try:
            yield proxy, creds.token
        finally:
            proxy.stop()


def _validate(proxy: ProxyProcess, token: str, *flags: str) -> subprocess.CompletedProcess[str]:
    argv = [
        str(ROOT / "bench" / "validate"),
        "--url",
        proxy.url,
        "--token",
        token,
        "--duration",
        "2",
        "--concurrency",
        "4",
        *flags,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_targets_that_hold_pass(deployment: tuple[ProxyProcess, str]) -> None:
    proxy, token = deployment
    assert proxy.proc is not None
    done = _validate(
        proxy,
        token,
        "--max-p99-ms",
        "5000",
        "--max-rss-mb",
        "4000",
        "--pid",
        str(proxy.proc.pid),
        "--soak",
        "3",
        "--max-leak-mb-per-min",
        "1000",
        "--json",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    assert doc["passed"] is True
    assert [c["name"] for c in doc["checks"]] == ["error rate", "P99", "RSS", "memory trend"]
    assert doc["figures"]["requests"] > 0
    assert doc["figures"]["rss_mb"] > 10  # master + worker were measured


def test_a_missed_target_fails_and_says_which(deployment: tuple[ProxyProcess, str]) -> None:
    proxy, token = deployment
    assert proxy.proc is not None
    done = _validate(
        proxy, token, "--max-p50-ms", "0.000001", "--max-rss-mb", "1", "--pid", str(proxy.proc.pid)
    )
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert any(line.strip().startswith("MISS  P50:") for line in lines), done.stdout
    assert any(line.strip().startswith("MISS  RSS:") for line in lines), done.stdout
    assert lines[-1] == "failed: a target was missed"


def test_a_bad_token_counts_as_errors(deployment: tuple[ProxyProcess, str]) -> None:
    proxy, _ = deployment
    done = _validate(proxy, "sk-llmp-not-a-token")
    assert done.returncode == 1
    assert "MISS  error rate: 100.0000%" in done.stdout


def test_an_unreachable_deployment_is_one_line_and_exit_2() -> None:
    argv = [str(ROOT / "bench" / "validate"), "--url", f"http://127.0.0.1:{procs.free_port()}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("error: cannot reach http://127.0.0.1:")
    assert len(done.stderr.strip().splitlines()) == 1
