"""The benchmark's own parts: the fake upstream speaks OpenAI's API, and bench/run runs end to end.

No wrk here (CI need not have it): the smoke run uses only the streaming scenarios, which the
Python driver measures.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench import procs

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = procs.free_port()
    logs = tmp_path_factory.mktemp("upstream")
    argv = [sys.executable, "-m", "bench.fake_upstream", "--port", str(port), "--chunks", "5"]
    with procs.running(procs.start("upstream", argv, logs, port=port)):
        yield f"http://127.0.0.1:{port}"


def test_fake_upstream_answers_like_openai(upstream: str) -> None:
    with httpx.Client(base_url=upstream) as client:
        chat = client.post("/v1/chat/completions", json={"model": "m", "messages": []})
        models = client.get("/v1/models")
        embeddings = client.post("/v1/embeddings", json={"model": "e", "input": "x"})
        missing = client.get("/v1/nothing")
        wrong = client.get("/v1/chat/completions")
    assert chat.status_code == 200
    assert chat.json()["usage"]["completion_tokens"] == 7
    assert chat.json()["choices"][0]["message"]["role"] == "assistant"
    assert models.json()["data"][0]["id"] == "gpt-4o-mini"
    assert len(embeddings.json()["data"][0]["embedding"]) == 1536
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert wrong.status_code == 405


def test_fake_upstream_streams_chunks_then_usage_then_done(upstream: str) -> None:
    body = {"model": "m", "stream": True, "stream_options": {"include_usage": True}}
    with (
        httpx.Client(base_url=upstream) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as resp,
    ):
        assert resp.headers["content-type"] == "text/event-stream"
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) == 6  # 5 content chunks and the usage chunk
    assert chunks[-1]["usage"]["completion_tokens"] == 5
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    # Without include_usage there is no usage chunk.
    with httpx.Client(base_url=upstream) as client:
        plain = client.post("/v1/chat/completions", json={"model": "m", "stream": True})
    assert plain.text.count("data: ") == 6


def test_bench_run_quick_streams_end_to_end(tmp_path: Path) -> None:
    # embedded too: the benchmark provisions its proxy through the CLI as an operator would
    targets = "direct,nginx,embedded" if shutil.which("nginx") else "direct,embedded"
    done = subprocess.run(
        [
            sys.executable, "-m", "bench.harness", "--quick", "--duration", "1",
            "--targets", targets, "--scenarios", "stream,stream-burst",
            "--chunk-delay-ms", "5", "--stall-ms", "10000", "--out", str(tmp_path),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [result_file] = tmp_path.glob("run-*.json")
    results = json.loads(result_file.read_text())
    for name in targets.split(","):
        target = results["targets"][name]
        assert target["status"] == "ok", target
        for level, run in target["scenarios"]["stream"].items():
            assert run["errors"] == 0, (name, level, run)
            assert run["streams"] > 0
            assert run["events"] == run["streams"] * 22  # 20 chunks, usage, [DONE]
        assert target["scenarios"]["stream-burst"]["512"]["errors"] == 0
        assert results["board"][name]["streams_no_stall"] == 512
    report = next(tmp_path.glob("run-*.md")).read_text()
    assert "## stream: streaming chat, 20 chunks" in report
