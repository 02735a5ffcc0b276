"""The operator console: server-rendered pages under ``/console/`` beside the management API."""

from proxy.console.actions import Backend
from proxy.console.app import create_console_app
from proxy.console.live import LiveFigures

__all__ = ["Backend", "LiveFigures", "create_console_app"]
