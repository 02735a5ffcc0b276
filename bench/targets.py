"""What the benchmark measures: direct to the upstream, nginx, and the proxy in its two set-ups.

The proxy's commands and environment live in the block below (PROXY_*, EMBEDDED_ENV,
PRODUCTION_ENV): change them there when `llm-proxy server` grows flags or variables.
Values may use {port}, {upstream}, {database_url}, {encryption_key} and {redis_addr}.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from bench import procs

# ---- The proxy under test -----------------------------------------------------------------------
BIN = Path(sys.executable).parent
LLM_PROXY = str(BIN / "llm-proxy") if (BIN / "llm-proxy").exists() else "llm-proxy"
PROXY_SERVER = [LLM_PROXY, "server"]  # listens on $PORT
PROXY_DISPATCHER = [LLM_PROXY, "dispatcher"]
PROXY_MIGRATE = [LLM_PROXY, "migrate"]
# High enough never to trigger: the benchmark measures the cost of checking, not of refusing.
LIMITS_OFF = {
    "GLOBAL_RATE_LIMIT": "1000000000",
    "IP_RATE_LIMIT": "1000000000",
    "DISTRIBUTED_RATE_LIMIT_MAX": "1000000000",
}
EMBEDDED_ENV = {"PORT": "{port}", "HTTP_CACHE_ENABLED": "true", **LIMITS_OFF}
PRODUCTION_ENV = {
    "PORT": "{port}",
    "WORKERS": "2",
    "DB_DRIVER": "postgres",
    "DATABASE_URL": "{database_url}",
    "ENCRYPTION_KEY": "{encryption_key}",
    "REDIS_ADDR": "{redis_addr}",
    "HTTP_CACHE_ENABLED": "true",
    "HTTP_CACHE_BACKEND": "redis",
    "LLM_PROXY_EVENT_BUS": "redis-streams",
    "DISTRIBUTED_RATE_LIMIT_ENABLED": "true",
    **LIMITS_OFF,
}
NO_LIMITS = {
    "DISTRIBUTED_RATE_LIMIT_ENABLED": "false",
    "GLOBAL_RATE_LIMIT": "0",
    "IP_RATE_LIMIT": "0",
}
PG_ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
# Variables passed through to the proxy; everything else in the caller's environment is dropped
# so a stray DB_DRIVER or REDIS_ADDR in the shell cannot change what is measured.
PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")
# --------------------------------------------------------------------------------------------------


@dataclass
class Context:
    upstream_port: int
    workdir: Path  # one temporary directory per run; each target gets a sub-directory
    logs: Path


@dataclass
class Running:
    """A started target: where to send requests, how to authenticate, what to measure."""

    port: int
    auth: str = ""  # Authorization header value
    measured: list[procs.Proc] = field(default_factory=list)  # RSS/CPU reported as the target's
    helpers: list[procs.Proc] = field(default_factory=list)  # dispatcher, private Redis
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    def pids(self) -> list[int]:
        return [pid for p in self.measured for pid in p.pids()]

    def stop(self) -> None:
        for proc in [*self.measured, *reversed(self.helpers)]:
            procs.stop(proc)
        for fn in reversed(self.cleanup):
            with contextlib.suppress(Exception):
                fn()


@dataclass(frozen=True)
class Target:
    name: str
    about: str
    start: Callable[[Context], Running]
    unavailable: Callable[[], str | None] = lambda: None
    hidden: bool = False


def base_env() -> dict[str, str]:
    """The proxy's environment. ``BENCH_PROXY_SOURCE`` (a checkout's root) puts that checkout's
    packages first on the proxy's import path: an earlier commit measured by this harness, for a
    before/after on the same machine (docs/performance.md)."""
    env = {k: v for k, v in os.environ.items() if k in PASS_ENV}
    source = os.environ.get("BENCH_PROXY_SOURCE")
    if source:
        env["PYTHONPATH"] = source
    return env


def fill(template: dict[str, str], values: dict[str, str]) -> dict[str, str]:
    return {k: v.format(**values) for k, v in template.items()}


# ---- direct and nginx ----------------------------------------------------------------------------


def start_direct(ctx: Context) -> Running:
    return Running(port=ctx.upstream_port)


NGINX_CONF = """
worker_processes 2;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream fake {{
        server 127.0.0.1:{upstream};
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def nginx_unavailable() -> str | None:
    return None if shutil.which("nginx") else "nginx is not installed (apt-get install nginx)"


def start_nginx(ctx: Context) -> Running:
    """nginx proxy_pass, upstream keep-alive, 2 workers, no buffering (so SSE passes through)."""
    conf_dir = ctx.workdir / "nginx"
    conf_dir.mkdir()
    port = procs.free_port()
    conf = conf_dir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=conf_dir, upstream=ctx.upstream_port, port=port))
    argv = ["nginx", "-p", str(conf_dir), "-c", str(conf), "-g", "daemon off;"]
    return Running(port=port, measured=[procs.start("nginx", argv, ctx.logs, port=port)])


# ---- the proxy -----------------------------------------------------------------------------------


def proxy_unavailable() -> str | None:
    try:
        done = subprocess.run(
            [*PROXY_SERVER, "--help"], capture_output=True, timeout=60, env=base_env()
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`llm-proxy server` cannot run: {exc}"
    if done.returncode != 0:
        return "`llm-proxy server` is not available on this branch yet (issue 3)"
    return None


def cli(argv: list[str], env: dict[str, str], cwd: Path) -> dict[str, object]:
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} failed: {done.stderr.strip()[-2000:]}")
    return dict(orjson.loads(done.stdout)) if done.stdout.strip().startswith("{") else {}


#: A budget far above what a run spends: it is checked and settled on every request, never hit.
BUDGET_FLAGS = (
    "--budget-usd",
    "1000000",
    "--budget-tokens",
    "100000000000",
    "--budget-window",
    "1d",
)


def issue_token(
    ctx: Context, env: dict[str, str], cwd: Path, token_flags: tuple[str, ...] = ()
) -> str:
    """A project whose base URL is the fake upstream, and a one-hour token for it (in a database
    `llm-proxy migrate` made: the CLI creates none by itself); ``token_flags`` are added to
    `token generate` (a budget, say)."""
    cli(PROXY_MIGRATE, env, cwd)
    project = cli(
        [
            LLM_PROXY,
            "manage",
            "project",
            "create",
            "--name",
            "bench",
            "--base-url",
            f"http://127.0.0.1:{ctx.upstream_port}/v1",
            "--api-key",
            "x",
            "--json",
        ],
        env,
        cwd,
    )
    token = cli(
        [
            LLM_PROXY,
            "manage",
            "token",
            "generate",
            "--project-id",
            str(project["id"]),
            "--duration",
            "1h",
            *token_flags,
            "--json",
        ],
        env,
        cwd,
    )
    return f"Bearer {token['token']}"


def start_embedded(ctx: Context, *, name: str = "embedded", **extra: str) -> Running:
    """`llm-proxy server` with nothing configured: SQLite in its working dir, in-memory the rest
    (``extra``: variables to add, for a variant such as profiling on)."""
    cwd = ctx.workdir / name
    cwd.mkdir()
    port = procs.free_port()
    env = {**base_env(), **fill(EMBEDDED_ENV, {"port": str(port)}), **extra}
    auth = issue_token(ctx, env, cwd)
    server = procs.start(name, PROXY_SERVER, ctx.logs, env=env, port=port, cwd=cwd, inherit=False)
    return Running(port=port, auth=auth, measured=[server])


def start_production(ctx: Context, *, limits: bool = True, budgets: bool = False) -> Running:
    """gunicorn (2 workers) on Postgres, Redis cache, Redis Streams bus, limits on, a dispatcher.

    Postgres: a throwaway database on the shared server. Redis: a private redis-server, so the
    flood of cache reads and XADDs never touches the shared one. ``limits=False`` is the same
    with every rate limit off, to measure what checking them costs; ``budgets=True`` gives the
    token a dollar and token budget (never reached), to measure what budgets cost.
    """
    import psycopg

    from shared.crypto import new_key

    cwd = ctx.workdir / (
        "production-budgets" if budgets else "production" if limits else "production-nolimits"
    )
    cwd.mkdir()
    running = Running(port=procs.free_port())
    try:
        redis_port = procs.free_port()
        redis = procs.start(
            "redis",
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(redis_port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(cwd),
            ],
            ctx.logs,
            port=redis_port,
        )
        running.helpers.append(redis)
        db = f"llmproxy_bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db}"')
        running.cleanup.append(lambda: drop_database(db))
        values = {
            "port": str(running.port),
            "database_url": f"{PG_ADMIN_URL.rpartition('/')[0]}/{db}",
            "encryption_key": new_key(),
            "redis_addr": f"127.0.0.1:{redis_port}",
        }
        env = {**base_env(), **fill(PRODUCTION_ENV, values)}
        if not limits:
            env.update(NO_LIMITS)
        cli(PROXY_MIGRATE, env, cwd)
        running.auth = issue_token(ctx, env, cwd, BUDGET_FLAGS if budgets else ())
        running.helpers.append(
            procs.start("dispatcher", PROXY_DISPATCHER, ctx.logs, env=env, cwd=cwd, inherit=False)
        )
        running.measured.append(
            procs.start(
                "production",
                PROXY_SERVER,
                ctx.logs,
                env=env,
                port=running.port,
                cwd=cwd,
                inherit=False,
            )
        )
    except BaseException:
        running.stop()
        raise
    return running


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---- the best variant of the client study, to test the harness before the proxy exists --------


def start_experimental(ctx: Context) -> Running:
    port = procs.free_port()
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "-w",
        "2",
        "-k",
        "uvicorn_worker.UvicornWorker",
        "-b",
        f"127.0.0.1:{port}",
        "--backlog",
        "4096",
        "bench.experiments.proxy_app:app",
    ]
    env = {
        "EXP_APP": "asgi",
        "EXP_CLIENT": "raw",
        "EXP_UPSTREAM": f"http://127.0.0.1:{ctx.upstream_port}",
    }
    return Running(port=port, measured=[procs.start("experimental", argv, ctx.logs, env, port)])


# ---- a peer: LiteLLM's proxy --------------------------------------------------------------------
LITELLM_VERSION = "1.108.7"
LITELLM_VENV = Path(
    os.environ.get("BENCH_LITELLM_VENV", Path.home() / ".cache" / "llm-proxy-bench" / "litellm")
)
LITELLM_KEY = "sk-bench-litellm-master-0123456789abcdef"
LITELLM_CONFIG = """model_list:
  - model_name: "*"
    litellm_params:
      model: "openai/*"
      api_base: "http://127.0.0.1:{upstream}/v1"
      api_key: "sk-fake-upstream"
litellm_settings:
  telemetry: false
"""


def litellm_bin() -> Path:
    """LiteLLM's proxy in a virtual environment of its own, installed on first use."""
    binary = LITELLM_VENV / "bin" / "litellm"
    if not binary.exists():
        print(f"installing litellm[proxy]=={LITELLM_VERSION} into {LITELLM_VENV}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run(
            [
                str(LITELLM_VENV / "bin" / "pip"),
                "install",
                "-q",
                f"litellm[proxy]=={LITELLM_VERSION}",
            ],
            check=True,
        )
    return binary


def start_litellm(ctx: Context) -> Running:
    """LiteLLM's proxy, 2 workers like ours, pointed at the same fake upstream; no database, so
    no spend tracking or key management: the least it can do, and so its fastest."""
    cwd = ctx.workdir / "litellm"
    cwd.mkdir()
    config = cwd / "config.yaml"
    config.write_text(LITELLM_CONFIG.format(upstream=ctx.upstream_port))
    port = procs.free_port()
    argv = [
        str(litellm_bin()),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "2",
    ]
    env = {
        **base_env(),
        "LITELLM_MASTER_KEY": LITELLM_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price list at start
        "LITELLM_LOG": "ERROR",
    }
    server = procs.start(
        "litellm", argv, ctx.logs, env=env, port=port, cwd=cwd, inherit=False, timeout=180
    )
    return Running(port=port, auth=f"Bearer {LITELLM_KEY}", measured=[server])


TARGETS = {
    t.name: t
    for t in (
        Target("direct", "straight to the fake upstream (the floor)", start_direct),
        Target(
            "nginx",
            "nginx proxy_pass, 2 workers, upstream keep-alive",
            start_nginx,
            nginx_unavailable,
        ),
        Target(
            "embedded",
            "llm-proxy server, no configuration (SQLite, in-memory)",
            start_embedded,
            proxy_unavailable,
        ),
        Target(
            "embedded-profiling",
            "the embedded target with PROFILING_ENABLED=true (what profiling costs)",
            lambda ctx: start_embedded(ctx, name="embedded-profiling", PROFILING_ENABLED="true"),
            proxy_unavailable,
        ),
        Target(
            "production",
            "llm-proxy on gunicorn x2, Postgres, Redis cache+bus+limits, dispatcher",
            start_production,
            proxy_unavailable,
        ),
        Target(
            "production-nolimits",
            "the production target with every rate limit off (what limits cost)",
            lambda ctx: start_production(ctx, limits=False),
            proxy_unavailable,
        ),
        Target(
            "production-budgets",
            "the production target with a dollar and token budget on the token (what budgets cost)",
            lambda ctx: start_production(ctx, budgets=True),
            proxy_unavailable,
        ),
        Target(
            "litellm",
            "LiteLLM's proxy (litellm[proxy], 2 workers, no database), installed on demand",
            start_litellm,
        ),
        Target(
            "experimental",
            "study's raw ASGI + raw client under gunicorn x2 (no features)",
            start_experimental,
            hidden=True,
        ),
    )
}
