"""The shipped Grafana dashboard and Prometheus alert rules (helm/llm-proxy/files/) work on what
llm-proxy really exposes: promtool accepts the rules, every metric they name is on a live scrape
of a real proxy and dispatcher, and a real Prometheus scraping both answers every panel's query
with data and evaluates every rule without error."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from shared.crypto import new_key
from tests.deploy_wiring import CHART_DIR, require_tool
from tests.prometheus_server import PrometheusServer
from tests.proxy_process import UNLIMITED, DispatcherProcess, ProxyProcess, provision
from tests.services import REDIS_HOST, REDIS_PORT, create_database, drop_database, free_port
from tests.services import require as require_service
from tests.upstream_fake import FakeUpstream

RULES = CHART_DIR / "files" / "llm-proxy-rules.yaml"
DASHBOARD = CHART_DIR / "files" / "llm-proxy-dashboard.json"
# Grafana's own variables, as Grafana would fill them in for a short range.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "5m"}


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of the dashboard, Grafana variables filled in."""
    board = json.loads(DASHBOARD.read_text())
    found = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            found.append((panel["title"], expr))
    return found


def rule_queries() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """Our metric names in a PromQL expression (as sampled: `_bucket`, `_total` included)."""
    return set(re.findall(r"\bllm_proxy_[A-Za-z0-9_:]*", expr))


def exposed_names(exposition: str) -> set[str]:
    return set(re.findall(r"^([a-zA-Z_:][\w:]*)", exposition, re.M))


def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    checked = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # and it is no rubber stamp: a rule with broken PromQL is refused
    broken = tmp_path / "broken.yaml"
    broken.write_text("groups: [{name: g, rules: [{alert: A, expr: 'rate(x[5m]'}]}]\n")
    refused = subprocess.run(
        [promtool, "check", "rules", str(broken)], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0


def test_the_dashboard_covers_what_operators_watch() -> None:
    board = json.loads(DASHBOARD.read_text())
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == [
        "Traffic",
        "Latency",
        "Errors",
        "Cache",
        "Limits",
        "Event pipeline",
        "Dead letters and spool",
        "Tokens",
    ]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]


@dataclass
class Live:
    prometheus: PrometheusServer
    proxy_text: str
    dispatcher_text: str
    traffic_done_at: float


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A proxy (gunicorn, Redis streams, Redis cache and limits) and a dispatcher on Postgres,
    scraped by a real Prometheus that loads the shipped rules, after traffic of every kind."""
    require_tool("prometheus")
    require_service("PostgreSQL", "127.0.0.1", 5432)
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    tmp_path = tmp_path_factory.mktemp("observability")
    pg_url = create_database()
    fake = FakeUpstream().start()
    tag = uuid.uuid4().hex[:8]
    env = {
        **UNLIMITED,
        "DB_DRIVER": "postgres",
        "DATABASE_URL": pg_url,
        "ENCRYPTION_KEY": new_key(),
        "REDIS_ADDR": f"{REDIS_HOST}:{REDIS_PORT}",
        "LLM_PROXY_EVENT_BUS": "redis-streams",
        "REDIS_STREAM_KEY": f"t{tag}-events",
        "REDIS_CONSUMER_GROUP": f"t{tag}-dispatchers",
        "HTTP_CACHE_BACKEND": "redis",
        "REDIS_CACHE_KEY_PREFIX": f"t{tag}:cache:",
        "DISTRIBUTED_RATE_LIMIT_ENABLED": "true",
        "DISTRIBUTED_RATE_LIMIT_PREFIX": f"t{tag}:rl:",
        "EVENT_SPOOL_DIR": str(tmp_path / "spool"),
    }
    proxy = dispatcher = prometheus = None
    try:
        creds = provision(env, tmp_path, fake.base_url, rpm=5)
        proxy = ProxyProcess(env=env, cwd=tmp_path, workers=2).start()
        dispatcher_addr = f"127.0.0.1:{free_port()}"
        dispatcher = DispatcherProcess({**env, "DISPATCHER_HTTP_ADDR": dispatcher_addr}, tmp_path)
        dispatcher.start()
        prometheus = PrometheusServer(
            tmp_path,
            {"llm-proxy": f"127.0.0.1:{proxy.port}", "llm-proxy-dispatcher": dispatcher_addr},
            [RULES],
        ).start()
        server = prometheus
        server.wait_for(lambda: len(server.query("up == 1")) == 2)

        auth = {"Authorization": f"Bearer {creds.token}"}
        chat = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]}
        failing = {**chat, "model": "fail-500"}
        statuses = [httpx.get(f"{proxy.url}/v1/models", headers=auth).status_code for _ in "ab"]
        for body in (chat, failing):
            post = httpx.post(f"{proxy.url}/v1/chat/completions", headers=auth, json=body)
            statuses.append(post.status_code)
        statuses += [httpx.get(f"{proxy.url}/v1/files", headers=auth).status_code for _ in "ab"]
        statuses.append(httpx.get(f"{proxy.url}/v1/models").status_code)
        assert statuses == [200, 200, 200, 500, 200, 429, 401]
        done_at = time.time()

        # every request recorded, then every series scraped often enough for a rate()
        server.wait_for(
            lambda: (
                bool(server.query("llm_proxy_dispatcher_rows_inserted_total >= 6"))
                and bool(server.query("sum(llm_proxy_tokens_total) > 0"))
            )
        )
        server.wait_for(
            # one scrape takes every series of a process: the requests' newest ones suffice
            lambda: bool(server.query("min(count_over_time(llm_proxy_requests_total[1m])) >= 3"))
        )
        # a second round, now that the series exist, for rates above zero
        for _ in range(3):
            assert httpx.get(f"{proxy.url}/v1/models").status_code == 401
            assert httpx.get(f"{proxy.url}/v1/models", headers=auth).status_code == 429
        server.wait_for(lambda: bool(server.query("sum(llm_proxy_auth_failures_total) >= 4")))
        proxy_text = httpx.get(f"{proxy.url}/metrics", timeout=10).text
        dispatcher_text = httpx.get(f"http://{dispatcher_addr}/metrics", timeout=10).text
        yield Live(prometheus, proxy_text, dispatcher_text, done_at)
    finally:
        for process in (prometheus, dispatcher, proxy):
            if process is not None:
                process.stop()
        fake.stop()
        drop_database(pg_url)


@pytest.mark.timeout(300)  # the first test also starts the module's processes
def test_every_metric_a_panel_or_rule_uses_is_on_a_live_scrape(live: Live) -> None:
    exposed = exposed_names(live.proxy_text) | exposed_names(live.dispatcher_text)
    used: dict[str, set[str]] = {}
    for where, expr in panel_queries() + rule_queries():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(where)
    assert len(used) > 20
    missing = {name: sorted(places) for name, places in used.items() if name not in exposed}
    assert missing == {}
    # the check can fail: a name we do not expose is found missing
    assert metric_names("rate(llm_proxy_nothing_total[5m])") - exposed == {
        "llm_proxy_nothing_total"
    }


def test_every_panel_query_answers_with_data(live: Live) -> None:
    empty = []
    for title, expr in panel_queries():
        if not live.prometheus.query(expr):  # raises with Prometheus's error on bad PromQL
            empty.append((title, expr))
    assert empty == []
    # the panels show the traffic: the second round's refusals as rates above zero
    queries = dict(panel_queries()[::-1])  # a panel's first query
    for title, label in (("Requests by status", "401"), ("Rate-limited by kind", "token")):
        values = {
            next(iter(r["metric"].values())): float(r["value"][1])
            for r in live.prometheus.query(queries[title])
        }
        assert values[label] > 0, (title, values)
    by_status = {
        r["metric"]["status"]
        for r in live.prometheus.query("sum by (status) (llm_proxy_requests_total)")
    }
    assert {"200", "500", "429", "401"} <= by_status


def test_every_alert_rule_is_loaded_and_evaluates_without_error(live: Live) -> None:
    for alert, expr in rule_queries():
        live.prometheus.query(expr)  # raises with Prometheus's error on bad PromQL

    def evaluated_after_traffic() -> bool:
        rules = rules_of(live.prometheus)
        return all(_timestamp(r["lastEvaluation"]) > live.traffic_done_at for r in rules.values())

    live.prometheus.wait_for(evaluated_after_traffic)
    rules = rules_of(live.prometheus)
    assert sorted(rules) == sorted(alert for alert, _ in rule_queries())
    unhealthy = {name: r.get("lastError") for name, r in rules.items() if r["health"] != "ok"}
    assert unhealthy == {}


def rules_of(prometheus: PrometheusServer) -> dict[str, dict[str, Any]]:
    groups = prometheus.api("rules")["groups"]
    return {rule["name"]: rule for group in groups for rule in group["rules"]}


def _timestamp(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")[:26] + "+00:00").timestamp()
