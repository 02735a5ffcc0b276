"""README's "Try it" steps, run as written (addresses aside) in the directory of a real
`llm-proxy server`, and the trap of running them from another directory."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.proxy_process import UNLIMITED, ProxyProcess
from tests.upstream_fake import FakeUpstream

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BIN = os.path.dirname(sys.executable)  # this virtualenv's llm-proxy and python3, as activated


def block(marker: str) -> str:
    """The fenced block right after ``<!-- marker -->`` in README.md."""
    found = re.search(rf"<!-- {marker} -->\n```\w*\n(.*?)\n```", README, re.S)
    assert found, f"README.md has no block marked {marker}"
    return found.group(1)


def shell(script: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env={"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(cwd), **env},
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_the_try_it_steps_work_as_written(tmp_path: Path) -> None:
    fake = FakeUpstream().start()
    proxy = ProxyProcess(env=dict(UNLIMITED), cwd=tmp_path, workers=1).start()
    here = f"127.0.0.1:{proxy.port}"
    snippet = block("readme-python").replace("localhost:8080", here)
    snippet = snippet.replace('api_key="sk-llmp-..."', 'api_key=os.environ["TOKEN"]')
    (tmp_path / "snippet.py").write_text("import os\n" + snippet + "\n")
    script = "\n".join(
        [
            block("readme-setup"),
            # the one step that is not README's: keep the requests on this machine
            f'llm-proxy manage project update "$PROJECT" --base-url {fake.base_url} >/dev/null',
            block("readme-curl").replace("localhost:8080", here) + " > curl.json",
            'TOKEN="$TOKEN" python3 snippet.py > python.out',
            block("readme-show") + " > show.txt",
            'echo "$TOKEN_ID" > token_id',
        ]
    )
    try:
        done = shell(script, tmp_path)
        assert done.returncode == 0, done.stderr + proxy.logs()
        reply = json.loads((tmp_path / "curl.json").read_text())
        assert reply["choices"][0]["message"]["content"] == "hello"
        printed = (tmp_path / "python.out").read_text()
        assert printed.startswith("hello\n") and printed.endswith("t0t1t2t3t4")
        token_id = (tmp_path / "token_id").read_text().strip()
        assert token_id in (tmp_path / "show.txt").read_text()
        # the three requests reach the token's totals (recorded in the background)
        deadline = time.monotonic() + 60
        while True:
            shown = shell(f'llm-proxy manage token show "{token_id}" --json', tmp_path)
            assert shown.returncode == 0, shown.stderr
            if json.loads(shown.stdout)["request_count"] == 3:
                break
            assert time.monotonic() < deadline, shown.stdout + proxy.logs()
            time.sleep(0.2)
        assert len(fake.requests) == 3
    finally:
        proxy.stop()
        fake.stop()


@pytest.mark.parametrize(
    "command",
    [
        "llm-proxy manage token list",
        "llm-proxy manage project create --name demo --api-key sk-upstream-abcdefgh12345678",
        "llm-proxy manage events tail",
    ],
)
def test_another_directory_gets_an_error_not_a_new_database(tmp_path: Path, command: str) -> None:
    done = shell(command, tmp_path)
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: no database at {tmp_path / 'llm-proxy.db'}:"), line
    assert "--api-url" in line and "DATABASE_URL" in line
    assert list(tmp_path.iterdir()) == [], "no database, no key file"
    # `migrate` is how a new one is made on purpose
    assert shell("llm-proxy migrate", tmp_path).returncode == 0
    assert (tmp_path / "llm-proxy.db").exists()
    assert shell("llm-proxy manage token list", tmp_path).returncode == 0
