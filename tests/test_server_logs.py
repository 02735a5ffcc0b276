"""One format for everything `llm-proxy server` prints: gunicorn's master and worker lines,
uvicorn's and the app's own, read from the real server's output."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.proxy_process import ProxyProcess
from tests.services import free_port

KEYS = {"ts", "level", "logger", "pid", "msg"}
TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
TEXT_LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+ \[\d+\]: .*"
)


def serve_and_stop(tmp_path: Path, log_format: str) -> str:
    env = {"LOG_FORMAT": log_format, "MANAGEMENT_LISTEN": f"127.0.0.1:{free_port()}"}
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=2).start()
    try:
        assert httpx.get(proxy.url + "/health").status_code == 200
        assert httpx.get(proxy.url + "/v1/models").status_code == 401  # a refusal, logged or not
        assert httpx.get(proxy.url + "/nowhere").status_code == 404
    finally:
        assert proxy.stop() == 0
    return proxy.logs()


def test_every_line_of_the_server_output_is_one_json_object(tmp_path: Path) -> None:
    output = serve_and_stop(tmp_path, "json")
    lines = [line for line in output.splitlines() if line.strip()]
    records: list[dict[str, Any]] = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"not JSON: {line!r}\n--- output:\n{output}")
        assert isinstance(record, dict) and record.keys() >= KEYS, line
        assert TS.fullmatch(record["ts"]) and record["level"] in {"debug", "info", "warning"}, line
        assert "\x1b" not in line, "no terminal colour codes"
        records.append(record)
    by_logger: dict[str, set[int]] = {}
    for record in records:
        by_logger.setdefault(record["logger"], set()).add(record["pid"])
    # gunicorn's master and workers, uvicorn inside each worker, the app: all in this one format
    assert {"gunicorn.error", "uvicorn.error", "llm_proxy.app"} <= by_logger.keys(), by_logger
    workers = by_logger["llm_proxy.app"]
    assert len(workers) == 2
    master = by_logger["gunicorn.error"] - workers
    assert len(master) == 1, by_logger
    messages = [r["msg"] for r in records if r["logger"] == "gunicorn.error"]
    assert any(m.startswith("Listening at: ") for m in messages)
    assert any("Shutting down: Master" in m for m in messages)


def test_text_lines_share_one_format_too(tmp_path: Path) -> None:
    output = serve_and_stop(tmp_path, "text")
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines
    for line in lines:
        assert TEXT_LINE.fullmatch(line), f"{line!r}\n--- output:\n{output}"
    assert any(" gunicorn.error " in line for line in lines)
    assert any(" llm_proxy.app " in line for line in lines)
