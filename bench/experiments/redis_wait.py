"""What REDIS_WAIT_REPLICAS costs the bus: one XADD batch through the real ``StreamSink`` with
and without ``WAIT 1``, against a private master and replica on loopback.

Reports the median and p99 time per batch and Redis's count of WAIT calls (one per batch: the
WAIT rides in the batch's pipeline). Loopback replication is the best case: on a network the
WAIT adds the replica's acknowledgement, about one master-replica round trip per batch.

Run: python -m bench.experiments.redis_wait
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from tempfile import mkdtemp

import redis

from proxy.bus.redis_streams import ReplicaWait, StreamSink
from proxy.redis_client import FastRedis
from shared.config import Settings
from shared.events import RequestEvent
from tests.services import RedisProcess

BATCHES = 300
PAD = "x" * 400  # an entry of about the measured 564 bytes


def _lines(n: int) -> list[bytes]:
    return [
        RequestEvent(
            str(uuid.uuid4()), PAD, time.time(), "", "", "POST", "/v1/chat/completions", 200
        ).to_bytes()
        for _ in range(n)
    ]


async def _measure(port: int, wait: int, batch: int) -> dict[str, float]:
    client = FastRedis.from_settings(
        Settings.from_env({"REDIS_ADDR": f"127.0.0.1:{port}", "REDIS_TIMEOUT": "2s"})
    )
    key = f"bench-wait-{wait}-{batch}"
    sink = StreamSink(client, key, owns_redis=True, wait=ReplicaWait(wait))
    lines = _lines(batch)
    times = []
    for _ in range(BATCHES):
        began = time.perf_counter()
        await sink.replay(lines)
        times.append(time.perf_counter() - began)
    await sink.close()
    times.sort()
    return {
        "median_ms": round(statistics.median(times) * 1000, 3),
        "p99_ms": round(times[int(len(times) * 0.99) - 1] * 1000, 3),
    }


def main() -> None:
    master = RedisProcess(extra=("--dir", mkdtemp())).start()
    replica = RedisProcess(
        extra=("--dir", mkdtemp(), "--replicaof", "127.0.0.1", str(master.port))
    ).start()
    try:
        admin = redis.Redis(host="127.0.0.1", port=master.port)
        follower = redis.Redis(host="127.0.0.1", port=replica.port)
        while follower.info("replication").get("master_link_status") != "up":
            time.sleep(0.1)
        out = []
        for batch in (50, 500):
            for wait in (0, 1):
                admin.config_resetstat()
                figures = asyncio.run(_measure(master.port, wait, batch))
                calls = admin.info("commandstats").get("cmdstat_wait", {}).get("calls", 0)
                out.append({"batch": batch, "wait": wait, **figures, "wait_calls": calls})
        print(json.dumps(out, indent=1))
    finally:
        replica.stop()
        master.stop()


if __name__ == "__main__":
    main()
