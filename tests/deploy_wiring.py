"""What the deployment files must agree with: setting names, the app's routes, nginx, compose."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from proxy.app import create_app
from shared.config import Settings, declared_fields

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_DIR = ROOT / "compose"
CHART_DIR = ROOT / "helm" / "llm-proxy"

# Variables read by software other than llm-proxy inside our containers.
FOREIGN_VARIABLES = {
    "PYTHONDONTWRITEBYTECODE",  # CPython
    "PYTHONUNBUFFERED",
    "PIP_NO_CACHE_DIR",  # pip, at image build time
    "PIP_DISABLE_PIP_VERSION_CHECK",
}


def settings_variables() -> set[str]:
    return {f.metadata["env"] for f in declared_fields()}


def cli_variables() -> set[str]:
    """The "Command-line variables" table of docs/configuration.md (a test keeps it in step
    with the CLI's flags)."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    section = text.split("## Command-line variables", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([A-Z0-9_]+)` \|", section, re.M))


def known_variables() -> set[str]:
    return settings_variables() | cli_variables() | FOREIGN_VARIABLES


def unknown_variables(names: set[str]) -> list[str]:
    return sorted(names - known_variables())


def app_paths(metrics_path: str = "/metrics") -> set[str]:
    """Paths the real proxy app serves besides `/v1/...`, with metrics at ``metrics_path``."""
    app = create_app(Settings.from_env({"METRICS_PATH": metrics_path}))
    return {getattr(route, "path", "") for route in app.web.routes}


def served_prefixes(env: dict[str, str] | None = None) -> set[str]:
    """Path prefixes the proxy serves on its public listener (PORT) with settings ``env``: the
    forwarded API and every sub-app mounted there."""
    settings = Settings.from_env(env or {})
    app = create_app(settings)
    prefixes = {route.path + "/" for route in app.web.routes if isinstance(route, Mount)}
    if settings.allowed_endpoints and all(e.startswith("/v1/") for e in settings.allowed_endpoints):
        prefixes.add("/v1/")
    return prefixes


def management_prefixes(env: dict[str, str]) -> set[str]:
    """Path prefixes the proxy serves on its management listener (MANAGEMENT_LISTEN)."""
    app = create_app(Settings.from_env(env))
    web = app.management_web
    assert isinstance(web, Starlette), "MANAGEMENT_LISTEN is not set: no management listener"
    return {route.path + "/" for route in web.routes if isinstance(route, Mount)}


def known_settings(env: dict[str, Any]) -> dict[str, str]:
    """The llm-proxy settings among a container's variables (placeholders apart)."""
    return {k: str(v) for k, v in env.items() if k in settings_variables() and v is not None}


def require_tool(name: str) -> str:
    """The path of a tool (this environment's own first); a missing one skips locally and fails
    in CI."""
    path = shutil.which(name, path=os.pathsep.join([os.path.dirname(sys.executable), os.defpath]))
    path = path or shutil.which(name)
    if path is None:
        message = f"{name} is not installed"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true: it is required)")
        pytest.skip(message)
    return path


def compose_model(env_file: Path, *profiles: str) -> dict[str, Any]:
    """docker-compose.yml as Docker Compose itself resolves it (anchors, merges, interpolation),
    by the real `docker-compose config` (no Docker engine needed)."""
    binary = require_tool("docker-compose")
    args = [
        binary,
        "--project-directory",
        str(COMPOSE_DIR),
        "-f",
        str(COMPOSE_DIR / "docker-compose.yml"),
    ]
    args += ["--env-file", str(env_file)]
    for profile in profiles:
        args += ["--profile", profile]
    done = subprocess.run(
        [*args, "config", "--format", "json"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    model: dict[str, Any] = json.loads(done.stdout)
    return model


def example_env(tmp_path: Path) -> Path:
    """compose/.env.example with its placeholders, as an operator would start from it."""
    target = tmp_path / "compose.env"
    shutil.copy(COMPOSE_DIR / ".env.example", target)
    return target


def llm_proxy_services(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The compose services that run our image."""
    image = model["services"]["proxy"]["image"]
    return {name: svc for name, svc in model["services"].items() if svc.get("image") == image}


def nginx_upstream_servers(conf: str) -> list[str]:
    block = re.search(r"upstream\s+llm_proxy\s*\{(.*?)\}", conf, re.S)
    assert block, "compose/nginx.conf has no `upstream llm_proxy` block"
    return re.findall(r"^\s*server\s+(\S+)", block.group(1), re.M)


def nginx_for_loopback(
    conf: str, upstreams: list[str], listen: str, source: str | None = None
) -> str:
    """compose/nginx.conf with only the upstream servers and the listen address replaced, and
    optionally the address nginx connects to the upstreams from (as its own container address
    is, in compose)."""
    servers = re.findall(r"^(\s*)server\s+\S+(.*);$", conf, re.M)
    assert len(servers) == 1, "expected one `server` line in the upstream block"
    indent, params = servers[0]
    lines = "\n".join(f"{indent}server {addr}{params};" for addr in upstreams)
    conf = re.sub(r"^\s*server\s+\S+.*;$", lambda _: lines, conf, count=1, flags=re.M)
    conf, count = re.subn(r"^(\s*)listen\s+\S+;$", rf"\g<1>listen {listen};", conf, flags=re.M)
    assert count == 1, "expected one `listen` line"
    if source is not None:
        conf = re.sub(
            r"^(\s*)(listen\s+\S+;)$", rf"\g<1>\g<2>\n\g<1>proxy_bind {source};", conf, flags=re.M
        )
    return conf


def nginx_size(text: str) -> int:
    """An nginx size (`10m`, `512k`, `26214400`) in bytes."""
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", text)
    assert match, f"not an nginx size: {text!r}"
    factor = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]
    return int(match.group(1)) * factor


def nginx_block(conf: str, header: str) -> str:
    """The text inside the first ``header { ... }`` block, nested blocks included."""
    match = re.search(rf"^\s*{re.escape(header)}\s*\{{", conf, re.M)
    assert match, f"no `{header} {{` block in the nginx configuration"
    depth, start = 1, match.end()
    for pos in range(start, len(conf)):
        depth += {"{": 1, "}": -1}.get(conf[pos], 0)
        if depth == 0:
            return conf[start:pos]
    raise AssertionError(f"unbalanced braces after `{header}`")


def nginx_directive(conf: str, name: str) -> str:
    """The value of a directive that occurs once in ``conf`` (a whole file or a block)."""
    values = re.findall(rf"^\s*{re.escape(name)}\s+([^;]+);", conf, re.M)
    assert len(values) == 1, f"expected one `{name}`, found {values}"
    return values[0].strip()


def nginx_seconds(text: str) -> int:
    match = re.fullmatch(r"(\d+)(s|m)?", text)
    assert match, f"not an nginx duration in seconds or minutes: {text!r}"
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)
