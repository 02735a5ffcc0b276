"""``llm-proxy server``: run the proxy."""

from __future__ import annotations

import glob
import logging
import os
import tempfile
from typing import Annotated

import typer

from admin.output import fail
from admin.runner import guarded_settings
from shared.config import explain
from shared.crypto import load_keyring
from shared.errors import LLMProxyError
from shared.logging import setup_logging

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def server(
    workers: Annotated[
        int | None, typer.Option("--workers", help="Worker processes (default: WORKERS).")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default: PORT).")] = None,
    reload: Annotated[
        bool, typer.Option("--reload", help="Development: one uvicorn process, reload on change.")
    ] = False,
) -> None:
    """Run the proxy: gunicorn with uvicorn workers, configured from the environment."""
    settings = guarded_settings()
    setup_logging(settings.log_level, settings.log_format)  # the master's lines, as the workers'
    _log_notices()
    if port is not None:
        settings = settings.replace(port=port)
    try:
        load_keyring(settings)  # refuse now, in one line, rather than in every worker
    except LLMProxyError as exc:
        fail(exc.message)
    if reload:
        if settings.management_listen:
            fail("--reload serves one address: unset MANAGEMENT_LISTEN to develop with it")
        import uvicorn

        from proxy.listener import protocol_class

        uvicorn.run(
            "proxy.app:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            reload=True,
            server_header=False,
            http=protocol_class(settings),
        )
        return
    _prepare_metrics_dir(settings.prometheus_multiproc_dir)
    from proxy.server import ProxyServer  # after the metrics dir is set: workers read it

    ProxyServer(settings, workers=workers).run()


def _log_notices() -> None:
    """Say once, at start, which tuning-guide variables have no effect here."""
    for notice in explain()[2]:
        logging.getLogger("llm_proxy.config").warning(notice)


def _prepare_metrics_dir(directory: str) -> None:
    """Prometheus multiprocess mode needs a directory shared by all workers, empty at start;
    prometheus-client finds it through its environment variable."""
    if directory:
        os.environ[MULTIPROC_ENV] = directory
        os.makedirs(directory, exist_ok=True)
        for path in glob.glob(os.path.join(directory, "*.db")):
            os.unlink(path)
    else:
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="llm-proxy-metrics-")
