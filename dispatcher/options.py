"""The dispatcher's options: settings (environment) first, command-line flags over them."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, replace
from typing import Any

from shared.config import Settings


def default_consumer_name() -> str:
    """Host name and pid: unique per process, and stable for a pod (pid 1) across restarts."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class Options:
    stream_key: str
    group: str
    consumer: str
    batch_size: int = 100
    buffer: int = 2000
    block_ms: int = 1000
    claim_idle: float = 30.0
    max_deliveries: int = 5
    trim_interval: float = 10.0
    write_timeout: float = 30.0
    release_after: float = 60.0
    shard: int = 0  # which of the REDIS_STREAM_SHARDS streams ``stream_key`` is (metrics' label)

    @classmethod
    def from_settings(cls, settings: Settings, **flags: Any) -> Options:
        """Options from the settings; flags given as not-None override them."""
        options = cls(
            stream_key=settings.redis_stream_key,
            group=settings.redis_consumer_group,
            consumer=settings.dispatcher_consumer_name or default_consumer_name(),
            batch_size=settings.dispatcher_batch_size,
            buffer=settings.dispatcher_buffer,
            block_ms=settings.dispatcher_block_ms,
            claim_idle=settings.dispatcher_claim_idle,
            max_deliveries=settings.dispatcher_max_deliveries,
            write_timeout=settings.dispatcher_write_timeout,
            release_after=settings.dispatcher_release_after,
        )
        options = replace(options, **{k: v for k, v in flags.items() if v is not None})
        if options.buffer < options.batch_size:
            options = replace(options, buffer=options.batch_size)  # room for one whole batch
        return options
