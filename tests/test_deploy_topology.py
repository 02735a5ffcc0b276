"""The compose topology without Docker: nginx (compose/nginx.conf) in front of two `llm-proxy
server` processes and a `llm-proxy dispatcher`, on real Redis and Postgres, with every process's
environment taken from docker-compose.yml and only addresses, ports and secrets rewritten for
loopback. Requests go through nginx end to end, a held stream included."""

from __future__ import annotations

import json
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis

from shared.crypto import new_key
from tests.deploy_wiring import (
    COMPOSE_DIR,
    compose_model,
    example_env,
    nginx_for_loopback,
    nginx_upstream_servers,
    require_tool,
)
from tests.proxy_process import BASE_ENV, ProxyProcess
from tests.services import (
    RedisProcess,
    create_database,
    drop_database,
    free_port,
    port_open,
    require,
)
from tests.upstream_fake import MODELS, FakeUpstream, events_of

CLIENT_ADDRESS = "127.0.0.5"  # the client's own loopback address, so nginx sees it as the peer
# nginx reaches the proxies from an address of its own, as from its container in compose: not
# 127.0.0.1, which uvicorn would trust by default, so only TRUSTED_PROXIES can make it believed.
NGINX_ADDRESS = "127.0.0.2"
UPSTREAM_KEY = "sk-upstream-topology-0123456789"


@dataclass
class Topology:
    root: Path
    env: dict[str, str]
    database_url: str
    redis: RedisProcess
    fake: FakeUpstream
    token: str = ""
    token_id: str = ""
    proxies: list[ProxyProcess] = field(default_factory=list)
    dispatcher: subprocess.Popen[bytes] | None = None
    nginx: subprocess.Popen[bytes] | None = None
    nginx_port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.nginx_port}"

    def log(self, name: str) -> str:
        path = self.root / name
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        parts = [f"--- {p.log_path}\n{p.logs()[-3000:]}" for p in self.proxies]
        for name in ("dispatcher.log", "nginx.log"):
            parts.append(f"--- {name}\n{self.log(name)[-3000:]}")
        return "\n".join(parts)

    @property
    def management_url(self) -> str:
        """One replica's management listener (MANAGEMENT_LISTEN), inside the network."""
        return "http://" + self.proxies[0].env["MANAGEMENT_LISTEN"]

    def remote_cli(self, *args: str, stdin: str = "") -> Any:
        """`llm-proxy manage ...` as an operator runs it inside the network: to a replica's
        management listener (nginx does not route it), with no database settings at all."""
        env = {
            **BASE_ENV,
            "LLM_PROXY_API_URL": self.management_url,
            "MANAGEMENT_TOKEN": self.env["MANAGEMENT_TOKEN"],
        }
        done = subprocess.run(
            [sys.executable, "-m", "admin", *args, "--json"],
            env=env,
            cwd=self.root,
            input=stdin.encode(),
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr.decode() + self.logs()
        return json.loads(done.stdout)

    def client(self) -> httpx.Client:
        transport = httpx.HTTPTransport(local_address=CLIENT_ADDRESS)
        return httpx.Client(
            base_url=self.url,
            transport=transport,
            timeout=30,
            headers={"Authorization": f"Bearer {self.token}"},
        )

    def nginx_access(self) -> list[dict[str, Any]]:
        lines = self.log("nginx.log").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def rows(self) -> list[dict[str, Any]]:
        with psycopg.connect(self.database_url) as conn:
            cursor = conn.execute(
                "SELECT request_id, path, status, client_ip, stream FROM request_events "
                "WHERE token_id = %s",
                (self.token_id,),
            )
            names = [c.name for c in cursor.description or []]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def service_env(model: dict[str, Any], name: str, overrides: dict[str, str]) -> dict[str, str]:
    """A compose service's environment with loopback addresses, ports and secrets. Only
    variables the compose file sets are rewritten: a missing one fails here."""
    env = {k: str(v) for k, v in model["services"][name]["environment"].items() if v is not None}
    missing = sorted(set(overrides) - set(env))
    assert not missing, f"docker-compose.yml does not set {missing} for {name}"
    return {**env, **overrides}


def start_nginx(topo: Topology, model: dict[str, Any]) -> None:
    nginx = require_tool("nginx")
    conf = (COMPOSE_DIR / "nginx.conf").read_text()
    (server,) = nginx_upstream_servers(conf)
    assert server.split(":")[1] == topo.env["PORT"], "nginx sends to the port the proxies use"
    upstreams = [f"127.0.0.1:{p.port}" for p in topo.proxies]
    topo.nginx_port = free_port()
    prefix = topo.root / "nginx"
    prefix.mkdir()
    conf_path = prefix / "nginx.conf"
    listen = f"127.0.0.1:{topo.nginx_port}"
    conf_path.write_text(nginx_for_loopback(conf, upstreams, listen, source=NGINX_ADDRESS))
    # compose's own command line, with the prefix and the file moved to this test's directory
    command = list(model["services"]["nginx"]["command"])
    command[command.index("-p") + 1] = f"{prefix}/"
    command[command.index("-c") + 1] = str(conf_path)
    command[0] = nginx
    # append mode: nginx writes its access log through a descriptor of its own (opened with
    # O_APPEND), its error log through this one, which would otherwise overwrite those lines
    with open(topo.root / "nginx.log", "ab") as log:
        topo.nginx = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while not port_open("127.0.0.1", topo.nginx_port):
        assert topo.nginx.poll() is None, topo.log("nginx.log")
        assert time.monotonic() < deadline, "nginx did not start"
        time.sleep(0.05)


def start_dispatcher(topo: Topology, model: dict[str, Any], env: dict[str, str]) -> None:
    command = list(model["services"]["dispatcher"]["command"])
    with open(topo.root / "dispatcher.log", "wb") as log:
        topo.dispatcher = subprocess.Popen(
            [sys.executable, "-m", "admin", *command],
            env={**BASE_ENV, **env},
            cwd=topo.root,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    port = int(env["DISPATCHER_HTTP_ADDR"].rsplit(":", 1)[1])
    deadline = time.monotonic() + 30
    while True:
        assert topo.dispatcher.poll() is None, topo.log("dispatcher.log")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "dispatcher not healthy:\n" + topo.log("dispatcher.log")
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    require("PostgreSQL", "127.0.0.1", 5432)
    require_tool("redis-server")
    root = tmp_path_factory.mktemp("topology")
    model = compose_model(example_env(root))
    database_url = create_database()
    private_redis = RedisProcess().start()
    fake = FakeUpstream().start()
    unique = uuid.uuid4().hex[:10]
    shared = {
        "DATABASE_URL": database_url,
        "REDIS_ADDR": private_redis.addr,
        "REDIS_PASSWORD": "",
        "ENCRYPTION_KEY": new_key(),
        "REDIS_STREAM_KEY": f"topology-{unique}-events",
        "REDIS_CONSUMER_GROUP": f"topology-{unique}-dispatchers",
    }
    # Small pools: the shared Postgres serves every engineer's tests.
    pools = {"DATABASE_POOL_SIZE": "4", "DATABASE_MAX_IDLE_CONNS": "1"}
    proxy_env = service_env(
        model,
        "proxy",
        {
            **shared,
            "MANAGEMENT_TOKEN": secrets.token_hex(16),
            "TRUSTED_PROXIES": f"{NGINX_ADDRESS}/32",
            "PROMETHEUS_MULTIPROC_DIR": str(root / "metrics"),
            "EVENT_SPOOL_DIR": str(root / "spool"),
            "MANAGEMENT_LISTEN": "",  # each replica gets a port of its own below
        },
    )
    topo = Topology(root, {**proxy_env, **pools}, database_url, private_redis, fake)
    try:
        migrate_env = service_env(model, "migrate", shared)
        migrated = subprocess.run(
            [sys.executable, "-m", "admin", *model["services"]["migrate"]["command"]],
            env={**BASE_ENV, **migrate_env},
            cwd=root,
            capture_output=True,
            timeout=60,
        )
        assert migrated.returncode == 0, migrated.stderr.decode()
        for i in range(2):
            env = {
                **topo.env,
                "PROMETHEUS_MULTIPROC_DIR": str(root / f"metrics-{i}"),
                "MANAGEMENT_LISTEN": f"127.0.0.1:{free_port()}",
            }
            topo.proxies.append(ProxyProcess(env=env, cwd=root, workers=2).start())
        dispatcher_env = service_env(
            model, "dispatcher", {**shared, "DISPATCHER_HTTP_ADDR": f"127.0.0.1:{free_port()}"}
        )
        start_dispatcher(topo, model, {**dispatcher_env, **pools})
        start_nginx(topo, model)
        project = topo.remote_cli(
            "manage", "project", "create", "--name", "topology", "--base-url", fake.base_url,
            "--api-key-stdin", stdin=UPSTREAM_KEY + "\n",
        )  # fmt: skip
        token = topo.remote_cli("manage", "token", "generate", "--project-id", project["id"])
        topo.token, topo.token_id = token["token"], token["id"]
        yield topo
    finally:
        stop(topo.nginx, signal.SIGQUIT)
        for proxy in topo.proxies:
            proxy.stop()
        stop(topo.dispatcher)
        fake.stop()
        private_redis.stop()
        drop_database(database_url)


def test_requests_reach_the_upstream_through_nginx_and_both_proxies(topology: Topology) -> None:
    asked_before = len(events_of(topology.fake, "/v1/models"))
    fresh = {"n": uuid.uuid4().hex}  # a cache key no other test used
    with topology.client() as client:
        answers = [client.get("/v1/models", params=fresh) for _ in range(4)]
    for response in answers:
        assert response.status_code == 200, topology.logs()
        assert response.json() == MODELS
    # One cache in Redis for every replica: nginx alternates replicas, yet only the first request
    # went upstream. The entry is written before the answer's last byte leaves the proxy
    # (docs/caching.md "When an answer is stored"), so the repeat right after it is a hit.
    assert [r.headers["x-proxy-cache"] for r in answers] == ["miss", "hit", "hit", "hit"]
    assert len(events_of(topology.fake, "/v1/models")) == asked_before + 1
    with topology.client() as client:
        chat = client.post(
            "/v1/chat/completions",
            json={"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["content"] == "hello"
    assert chat.headers["x-request-id"]
    seen = topology.fake.requests[-1]
    assert seen.headers["authorization"] == f"Bearer {UPSTREAM_KEY}", "the project's key upstream"
    # nginx spread the requests over both replicas (round robin)
    used = {line["upstream"] for line in topology.nginx_access() if line["uri"].startswith("/v1/")}
    assert used == {f"127.0.0.1:{p.port}" for p in topology.proxies}


def test_a_stream_comes_through_nginx_chunk_by_chunk(topology: Topology) -> None:
    fake = topology.fake
    fake.release.clear()
    fake.stream_finished.clear()
    body = {"model": "hold", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with (
        topology.client() as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200, topology.logs()
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        # The upstream is holding the rest back: this chunk crossed the proxy and nginx alone.
        assert json.loads(first[6:])["choices"][0]["delta"]["content"] == "t0"
        assert not fake.stream_finished.is_set()
        fake.release.set()
        rest = [line[6:] for line in lines if line.startswith("data: ")]
    assert rest[-1] == "[DONE]"
    contents = [json.loads(r)["choices"][0]["delta"]["content"] for r in rest[:-1]]
    assert contents == [f"t{i}" for i in range(1, fake.stream_chunks)]


def test_the_proxy_sees_the_client_address_nginx_saw_and_no_forged_one(
    topology: Topology,
) -> None:
    with topology.client() as client:
        response = client.get("/v1/models", headers={"X-Forwarded-For": "203.0.113.9"})
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    deadline = time.monotonic() + 30
    while True:
        with psycopg.connect(topology.database_url) as conn:
            row = conn.execute(
                "SELECT client_ip FROM request_events WHERE request_id = %s", (request_id,)
            ).fetchone()
        if row is not None:
            break
        assert time.monotonic() < deadline, "the request was never recorded\n" + topology.logs()
        time.sleep(0.2)
    assert row[0] == CLIENT_ADDRESS


def test_nginx_answers_its_own_errors_in_the_openai_shape(topology: Topology) -> None:
    with topology.client() as client:
        unauthenticated = client.get("/v1/models", headers={"Authorization": "Bearer sk-llmp-nope"})
        metrics = client.get("/metrics")
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["error"]["message"]
    assert metrics.status_code == 404, "metrics stay inside the network"
    assert metrics.json()["error"]["code"] == "not_found"
    # The management API is not reachable through nginx, with the right token or not...
    management = {"Authorization": f"Bearer {topology.env['MANAGEMENT_TOKEN']}"}
    for path in ("/manage/projects", "/manage/openapi.json"):
        with httpx.Client(base_url=topology.url, timeout=30) as edge:
            refused = edge.get(path, headers=management)
        assert refused.status_code == 404, path
        assert refused.json()["error"]["code"] == "not_found"
        # ...nor on a replica's public port, only on its management listener
        assert httpx.get(topology.proxies[0].url + path, headers=management).status_code == 404
        assert httpx.get(topology.management_url + path, headers=management).status_code == 200
    # ...while each replica serves them to Prometheus directly
    direct = httpx.get(topology.proxies[0].url + topology.env["METRICS_PATH"], timeout=10)
    assert direct.status_code == 200 and "# TYPE" in direct.text
    # A body over MAX_REQUEST_BODY_BYTES is refused by nginx before any of it is read.
    limit = int(topology.env["MAX_REQUEST_BODY_BYTES"])
    with socket.create_connection(("127.0.0.1", topology.nginx_port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {limit + 1}\r\nConnection: close\r\n\r\n".encode()
        )
        reply = b""
        # read the answer, not until close: nginx lingers for the body it refused
        while b"\r\n\r\n" not in reply or len(reply.partition(b"\r\n\r\n")[2]) < _length(reply):
            chunk = sock.recv(65536)
            assert chunk, reply
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert json.loads(payload)["error"]["code"] == "request_too_large"


def _length(reply: bytes) -> int:
    head = reply.partition(b"\r\n\r\n")[0].decode("latin-1")
    found = re.search(r"^content-length:\s*(\d+)", head, re.I | re.M)
    assert found, head
    return int(found.group(1))


def test_the_dispatcher_records_every_request_exactly_once(topology: Topology) -> None:
    assert topology.dispatcher is not None
    with topology.client() as client:
        for _ in range(5):
            assert client.get("/v1/models").status_code == 200

    # Every authenticated request through nginx so far, cache hits and the stream included, by
    # its request id. nginx writes a request's access-log line after the answer's last byte has
    # left, so a client can be ahead of the log: both sides are read again until they agree.
    def answered() -> list[str]:
        return sorted(
            line["request_id"]
            for line in topology.nginx_access()
            if line["uri"].startswith("/v1/") and line["status"] == 200
        )

    def recorded() -> list[str]:
        return sorted(row["request_id"] for row in topology.rows())

    deadline = time.monotonic() + 30
    while (made := answered()) != (rows := recorded()):
        assert time.monotonic() < deadline, (
            f"answered but not recorded: {sorted(set(made) - set(rows))}; recorded but not "
            f"answered: {sorted(set(rows) - set(made))}; {len(rows)}/{len(made)} rows\n"
            + topology.logs()
        )
        time.sleep(0.2)
    assert len(made) == len(set(made)) >= 5, "each request once, under an id of its own"
    with psycopg.connect(topology.database_url) as conn:
        row = conn.execute(
            "SELECT request_count FROM tokens WHERE id = %s", (topology.token_id,)
        ).fetchone()
    assert row is not None and row[0] == len(made), "the token's count follows the rows exactly"
    stream_key = topology.env["REDIS_STREAM_KEY"]
    client = redis.Redis.from_url(f"redis://{topology.redis.addr}")
    try:
        (group,) = client.xinfo_groups(stream_key)
        assert group["name"].decode() == topology.env["REDIS_CONSUMER_GROUP"]
        assert group["pending"] == 0, "every event acknowledged after its commit"
        assert (group["entries-read"] or 0) >= len(made), "the events went through the stream"
    finally:
        client.close()
    assert topology.dispatcher.poll() is None, topology.log("dispatcher.log")
