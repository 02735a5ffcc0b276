"""A real Prometheus server (Debian's `prometheus`) on loopback, scraping given targets every
second and evaluating given rule files, queried through its HTTP API."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.deploy_wiring import require_tool
from tests.proxy_process import terminate
from tests.services import free_port


@dataclass
class PrometheusServer:
    workdir: Path
    #: job name -> "host:port" scraped at /metrics
    targets: dict[str, str]
    rule_files: list[Path] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> PrometheusServer:
        binary = require_tool("prometheus")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [addr]}]}
                for job, addr in self.targets.items()
            ],
        }
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        with open(self.workdir / "prometheus.log", "wb") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={path}",
                    f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_for(
            lambda: httpx.get(self.url + "/-/ready", timeout=2).status_code == 200, timeout
        )
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        terminate(proc)

    def logs(self) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of a successful API answer; an AssertionError with Prometheus's own
        error otherwise."""
        reply = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=30).json()
        assert reply["status"] == "success", f"{params}: {reply.get('error')}"
        return reply["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def wait_for(self, ready: Any, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if ready():
                    return
            except (httpx.HTTPError, AssertionError):
                pass
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.logs()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"prometheus: condition not met:\n{self.logs()[-3000:]}")
            time.sleep(0.25)
