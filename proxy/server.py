"""Serving the app: gunicorn with uvicorn workers (uvloop and httptools when installed)."""

from __future__ import annotations

import logging
import math
import os
import sys
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.glogging import Logger
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from proxy.listener import protocol_class
from shared.config import Settings
from shared.logging import style

log = logging.getLogger("llm_proxy.server")

#: After the grace period, how long a worker may take to record what it cut and flush its
#: events before gunicorn kills it.
FLUSH_MARGIN_SECONDS = 10


class _DrainingServer(Server):
    """uvicorn's server, telling the app the moment a shutdown signal arrives."""

    def __init__(self, config: Any, app: Any) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: Any) -> None:
        begin = getattr(self._app, "begin_drain", None)
        if begin is not None:
            begin()
        super().handle_exit(sig, frame)


class ProxyWorker(UvicornWorker):  # type: ignore[misc]
    """uvicorn worker with our server settings and draining on SIGTERM."""

    CONFIG_KWARGS: dict[str, Any] = {  # noqa: RUF012 - the base class declares it this way
        "loop": "auto",
        "http": "auto",
        "server_header": False,
        "lifespan": "on",
        # X-Forwarded-For is ours to judge (TRUSTED_PROXIES); uvicorn would otherwise believe
        # it from any loopback peer and rewrite the client address
        "proxy_headers": False,
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # open streams get exactly the configured grace; gunicorn's own (later) deadline only
        # backs it up, leaving the worker time to record the cut streams and flush its events
        self.config.timeout_graceful_shutdown = self.app.settings.shutdown_grace_period

    async def _serve(self) -> None:
        self.config.app = self.wsgi
        # our protocol: request-head limits and timeout, JSON errors (proxy/listener.py)
        self.config.http = protocol_class(self.app.settings)
        server = _DrainingServer(self.config, self.wsgi)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)


def _logger_class(fmt: str) -> type[Logger]:
    """gunicorn's logger with our line format on its handlers. uvicorn's loggers share those
    handlers (uvicorn_worker hands them over), so the master's, gunicorn's and uvicorn's lines
    read like the app's own."""

    class ProxyLogger(Logger):  # type: ignore[misc]
        def setup(self, cfg: Any) -> None:
            super().setup(cfg)
            for logger in (self.error_log, self.access_log):
                for handler in logger.handlers:
                    style(handler, fmt)

    return ProxyLogger


def _child_exit(server: Any, worker: Any) -> None:
    from proxy.metrics import mark_dead

    mark_dead(worker.pid)


class ProxyServer(BaseApplication):  # type: ignore[misc]
    """gunicorn, configured from our settings instead of its command line."""

    def __init__(self, settings: Settings, *, workers: int | None = None) -> None:
        self.settings = settings
        self.workers = workers or settings.workers or os.cpu_count() or 1
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        binds = [f"{s.host}:{s.port}"]
        if s.management_listen:  # the management API's own listener, served by the same workers
            binds.append(s.management_listen)
        options: dict[str, Any] = {
            "bind": binds,
            "workers": self.workers,
            "worker_class": "proxy.server.ProxyWorker",
            "graceful_timeout": math.ceil(s.shutdown_grace_period) + FLUSH_MARGIN_SECONDS,
            "timeout": 60,
            # longer than nginx's upstream keepalive_timeout, so the proxy never closes first
            "keepalive": 75,
            "backlog": 2048,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": s.log_level,
            "logger_class": _logger_class(s.log_format),
            "child_exit": _child_exit,
            "proc_name": "llm-proxy",
            # gunicorn 24+'s control socket sits at one path per user ($HOME/.gunicorn), shared
            # by every server on the host and unwritable on a read-only root; we never use it
            "control_socket_disable": True,
        }
        for key, value in options.items():
            if key in self.cfg.settings:  # control_socket_disable: gunicorn 24 and later
                self.cfg.set(key, value)

    def load(self) -> Any:
        from proxy.app import create_app

        return create_app(self.settings)
