"""``python -m dispatcher``: the same as ``llm-proxy dispatcher`` with settings from the env."""

from __future__ import annotations

import asyncio
import sys

from dispatcher.options import Options
from dispatcher.service import run_dispatcher
from shared.config import Settings
from shared.errors import ConfigError
from shared.logging import setup_logging


def main() -> None:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        raise SystemExit(1) from None
    setup_logging(settings.log_level, settings.log_format)
    asyncio.run(run_dispatcher(settings, Options.from_settings(settings)))


if __name__ == "__main__":
    main()
