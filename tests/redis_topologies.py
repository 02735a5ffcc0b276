"""Real Redis Cluster and Sentinel deployments on loopback, started and torn down by tests."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from tests.services import RedisProcess, free_port, port_open, unavailable

#: Generous for a loaded machine; the tests poll, they never assert on time.
_WAIT = 60.0


def require_redis_binaries() -> None:
    """Skip when redis-server / redis-cli are missing locally; fail in CI."""
    missing = [b for b in ("redis-server", "redis-cli") if shutil.which(b) is None]
    if missing:
        unavailable(f"{', '.join(missing)} not installed")


def wait_until(condition: Callable[[], bool], what: str, timeout: float = _WAIT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Cluster:
    """Three masters, one replica each (six redis-server processes in cluster mode), joined
    with ``redis-cli --cluster create``. ``node_timeout_ms`` is how long a dead master goes
    unnoticed before its replica takes over."""

    def __init__(self, *, masters: int = 3, node_timeout_ms: int = 2000) -> None:
        self.masters = masters
        self.node_timeout_ms = node_timeout_ms
        self.dir = tempfile.mkdtemp(prefix="llm-proxy-cluster-")
        self.nodes: list[RedisProcess] = []

    @property
    def addr(self) -> str:
        """REDIS_ADDR for REDIS_MODE=cluster: every node as a seed."""
        return ",".join(node.addr for node in self.nodes if node.proc is not None)

    def start(self) -> Cluster:
        for i in range(self.masters * 2):
            data = Path(self.dir, str(i))
            data.mkdir()
            node = RedisProcess(
                free_port(),
                extra=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(data / "nodes.conf"),
                    "--cluster-port",  # the default (port + 10000) may not be free or valid
                    str(free_port()),
                    "--cluster-node-timeout",
                    str(self.node_timeout_ms),
                    "--dir",
                    str(data),
                ),
            )
            self.nodes.append(node.start())
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(node.addr for node in self.nodes),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
        )
        wait_until(self._healthy, "the cluster to be ok on every node")
        wait_until(self._replicas_synced, "every replica to be in sync")
        return self

    def _replicas_synced(self) -> bool:
        replicas = [n for n in self.nodes if n.proc is not None and self.role(n) == "slave"]
        return len(replicas) == self.masters and all(
            self.client(n).info("replication").get("master_link_status") == "up" for n in replicas
        )

    def client(self, node: RedisProcess) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=5)

    def _healthy(self) -> bool:
        for node in self.nodes:
            if node.proc is None:
                continue
            info = self.client(node).cluster("info")
            if info["cluster_state"] != "ok" or int(info["cluster_known_nodes"]) < len(
                [n for n in self.nodes if n.proc is not None]
            ):
                return False
        return len(self.primaries()) == self.masters

    def role(self, node: RedisProcess) -> str:
        return str(self.client(node).execute_command("ROLE")[0].decode())

    def primaries(self) -> list[RedisProcess]:
        return [n for n in self.nodes if n.proc is not None and self.role(n) == "master"]

    def master_of(self, key: str) -> RedisProcess:
        """The node serving ``key``'s slot now."""
        any_node = self.client(self.primaries()[0])
        slot = int(any_node.cluster("keyslot", key))
        for start, end, master, *_ in any_node.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return next(n for n in self.nodes if n.port == int(master[1]))
        raise AssertionError(f"no master serves {key!r}")

    def replica_of(self, master: RedisProcess) -> RedisProcess:
        master_id = self.client(master).execute_command("CLUSTER", "MYID").decode()
        for node in self.nodes:
            if node.proc is None or node is master:
                continue
            if self.role(node) == "slave":
                nodes = self.client(node).execute_command("CLUSTER", "NODES").decode()
                mine = next(x for x in nodes.splitlines() if "myself" in x)
                if mine.split()[3] == master_id:
                    return node
        raise AssertionError("no replica follows that master")

    def failover(self, master: RedisProcess) -> RedisProcess:
        """CLUSTER FAILOVER on the master's replica (a planned, lossless switch); returns the
        new master once every live node sees it."""
        replica = self.replica_of(master)

        def took_over() -> bool:
            if self.role(replica) == "master":
                return True
            # refused or not started while the replica caught up: ask again (harmless)
            self.client(replica).execute_command("CLUSTER", "FAILOVER")
            time.sleep(1.0)
            return self.role(replica) == "master"

        wait_until(took_over, "the replica to take over")
        wait_until(self._healthy, "the cluster to settle after the failover")
        return replica

    def kill(self, master: RedisProcess) -> RedisProcess:
        """Kill a master outright (SIGKILL); returns the replica once it has taken over."""
        replica = self.replica_of(master)
        assert master.proc is not None
        master.proc.kill()
        master.proc.wait(timeout=10)
        master.proc = None
        return self.wait_promoted(replica)

    def wait_promoted(self, replica: RedisProcess) -> RedisProcess:
        """Until ``replica`` is a master and every live node sees every slot served."""
        wait_until(lambda: self.role(replica) == "master", "the replica to be promoted")
        wait_until(self._healthy_without_dead, "the cluster to serve every slot again")
        return replica

    def _healthy_without_dead(self) -> bool:
        live = [n for n in self.nodes if n.proc is not None]
        return all(self.client(n).cluster("info")["cluster_state"] == "ok" for n in live)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class SentinelSet:
    """One master, two replicas and three sentinels watching the master as ``name``."""

    def __init__(self, name: str = "llm-proxy-main") -> None:
        self.name = name
        self.dir = tempfile.mkdtemp(prefix="llm-proxy-sentinel-")
        self.servers: list[RedisProcess] = []
        self.sentinels: list[subprocess.Popen[bytes]] = []
        self.sentinel_ports: list[int] = []

    @property
    def addr(self) -> str:
        """REDIS_ADDR for REDIS_MODE=sentinel: the sentinels."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def start(self) -> SentinelSet:
        # each server its own --dir: a full resync writes an RDB file there, not in the cwd
        dirs = [Path(self.dir, f"server-{i}") for i in range(3)]
        for d in dirs:
            d.mkdir()
        master = RedisProcess(extra=("--dir", str(dirs[0]))).start()
        self.servers.append(master)
        for d in dirs[1:]:
            replica = RedisProcess(
                extra=("--dir", str(d), "--replicaof", "127.0.0.1", str(master.port))
            )
            self.servers.append(replica.start())
        for i in range(3):
            port = free_port()
            conf = Path(self.dir, f"sentinel-{i}.conf")
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.dir}\n"
                f"sentinel monitor {self.name} 127.0.0.1 {master.port} 2\n"
                f"sentinel down-after-milliseconds {self.name} 2000\n"
                f"sentinel failover-timeout {self.name} 10000\n"
                f"sentinel parallel-syncs {self.name} 2\n"
            )
            proc = subprocess.Popen(
                ["redis-server", str(conf), "--sentinel"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.sentinels.append(proc)
            self.sentinel_ports.append(port)
        for port in self.sentinel_ports:
            wait_until(lambda port=port: port_open("127.0.0.1", port), "a sentinel to listen")
        wait_until(self._replicas_known, "the sentinels to see both replicas")
        return self

    def sentinel(self, i: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.sentinel_ports[i], socket_timeout=5)

    def master_port(self) -> int:
        _, port = self.sentinel().sentinel_get_master_addr_by_name(self.name)
        return int(port)

    def _replicas_known(self) -> bool:
        for i in range(len(self.sentinels)):
            replicas = self.sentinel(i).sentinel_slaves(self.name)
            if len(replicas) < 2 or any(r["master-link-status"] != "ok" for r in replicas):
                return False
        return True

    def failover(self) -> int:
        """SENTINEL FAILOVER; returns the new master's port once it answers as master."""
        old = self.master_port()
        self.sentinel().execute_command("SENTINEL", "FAILOVER", self.name)
        wait_until(lambda: self.master_port() != old, "the sentinels to name a new master")
        new = self.master_port()
        node = redis.Redis(host="127.0.0.1", port=new, socket_timeout=5)
        wait_until(lambda: node.execute_command("ROLE")[0] == b"master", "the new master")
        return new

    def stop(self) -> None:
        for proc in self.sentinels:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)
        for server in self.servers:
            server.stop()
