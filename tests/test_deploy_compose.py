"""compose/: the file as Docker Compose resolves it, its wiring to the app, and nginx -t."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.server import ProxyServer
from shared.config import Secret, Settings, declared_fields, parse_duration
from tests.deploy_wiring import (
    COMPOSE_DIR,
    ROOT,
    app_paths,
    compose_model,
    example_env,
    known_settings,
    llm_proxy_services,
    management_prefixes,
    nginx_block,
    nginx_directive,
    nginx_for_loopback,
    nginx_seconds,
    nginx_size,
    nginx_upstream_servers,
    require_tool,
    served_prefixes,
    unknown_variables,
)

NGINX_CONF = (COMPOSE_DIR / "nginx.conf").read_text()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return compose_model(example_env(tmp_path_factory.mktemp("compose")))


@pytest.fixture(scope="module")
def services(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(model["services"])


def test_the_topology(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {
        "postgres",
        "redis",
        "migrate",
        "proxy",
        "dispatcher",
        "worker",
        "nginx",
    }
    assert services["proxy"]["deploy"]["replicas"] == 3
    assert services["dispatcher"]["deploy"]["replicas"] == 2
    assert services["proxy"]["command"] == ["server"]
    assert services["dispatcher"]["command"][0] == "dispatcher"
    assert services["worker"]["command"] == ["worker"]
    # nginx is the only way in from the host; Postgres and Redis are not published at all.
    published = {name for name, svc in services.items() if svc.get("ports")}
    assert published == {"nginx"}


def test_prometheus_is_an_optional_profile_scraping_proxies_and_dispatchers(
    tmp_path: Path, services: dict[str, dict[str, Any]]
) -> None:
    with_monitoring = compose_model(example_env(tmp_path), "monitoring")["services"]
    assert "prometheus" in with_monitoring and "prometheus" not in services
    config_mount = next(
        v for v in with_monitoring["prometheus"]["volumes"] if v["target"].endswith(".yml")
    )
    scrape = yaml.safe_load(Path(config_mount["source"]).read_text())["scrape_configs"]
    targets = {
        sd["names"][0]: (sd["port"], job["metrics_path"])
        for job in scrape
        for sd in job["dns_sd_configs"]
    }
    proxy_env = services["proxy"]["environment"]
    assert targets["proxy"] == (int(proxy_env["PORT"]), proxy_env["METRICS_PATH"])
    addr = services["dispatcher"]["environment"]["DISPATCHER_HTTP_ADDR"]
    dispatcher_port = int(addr.rsplit(":", 1)[1])
    assert targets["dispatcher"] == (dispatcher_port, "/metrics")
    assert str(dispatcher_port) in services["dispatcher"]["expose"]


def test_migrations_run_once_before_every_llm_proxy_process(
    services: dict[str, dict[str, Any]],
) -> None:
    migrate = services["migrate"]
    assert migrate["command"] == ["migrate"], "the image's entrypoint makes it `llm-proxy migrate`"
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, svc in llm_proxy_services({"services": services}).items():
        if name != "migrate":
            condition = svc["depends_on"]["migrate"]["condition"]
            assert condition == "service_completed_successfully", name


def test_redis_keeps_the_event_stream_safe(services: dict[str, dict[str, Any]]) -> None:
    command = " ".join(services["redis"]["command"])
    assert re.search(r"--maxmemory-policy noeviction\b", command)
    assert re.search(r"--appendonly yes\b", command)
    assert "--requirepass" in command and "$REDIS_PASSWORD" in command


def test_every_container_is_hardened(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        assert svc.get("read_only") is True, f"{name}: root filesystem must be read-only"
        assert svc.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in svc.get("security_opt", []), name
        assert not svc.get("cap_add"), name
        assert not svc.get("privileged"), name


def test_where_llm_proxy_writes_is_a_tmpfs_or_a_volume(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, svc in llm_proxy_services({"services": services}).items():
        mounts = [entry.split(":", 1)[0] for entry in svc.get("tmpfs", [])]
        mounts += [v["target"] for v in svc.get("volumes", []) if v["type"] == "volume"]
        env = svc["environment"]
        writable = ["/tmp"] + [
            env[k] for k in ("PROMETHEUS_MULTIPROC_DIR", "EVENT_SPOOL_DIR") if k in env
        ]
        for path in writable:
            assert any(path == m or path.startswith(m + "/") for m in mounts), (name, path)
    # The image creates the spool directory for its user, so a fresh volume is writable.
    spool = services["proxy"]["environment"]["EVENT_SPOOL_DIR"]
    assert re.search(
        rf"install -d -o llmproxy -g llmproxy .*{spool}", (ROOT / "Dockerfile").read_text()
    )


def test_every_variable_is_a_setting_of_llm_proxy(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in llm_proxy_services({"services": services}).items():
        assert unknown_variables(set(svc["environment"])) == [], name


def test_the_settings_parse(services: dict[str, dict[str, Any]]) -> None:
    """Each process's environment is accepted by the one settings object (placeholders apart)."""
    for name, svc in llm_proxy_services({"services": services}).items():
        env = {k: v for k, v in svc["environment"].items() if v is not None}
        known = {f.metadata["env"] for f in declared_fields()}
        settings = Settings.from_env({k: v for k, v in env.items() if k in known})
        assert settings.db_driver == "postgres", name
        assert settings.event_bus == "redis-streams", name


def test_secrets_come_from_the_env_file_only() -> None:
    raw = yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text())
    secret_names = {
        f.metadata["env"] for f in declared_fields() if isinstance(f.default, Secret)
    } | {"POSTGRES_PASSWORD"}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in secret_names and isinstance(value, str):
                    assert value.startswith("${"), f"{key} must come from compose/.env"
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(raw)
    required = set(re.findall(r"\$\{(\w+):\?", (COMPOSE_DIR / "docker-compose.yml").read_text()))
    example = (COMPOSE_DIR / ".env.example").read_text()
    listed = dict(re.findall(r"^(\w+)=(.*)$", example, re.M))
    assert set(listed) == required, "compose/.env.example lists exactly the required secrets"
    assert set(listed.values()) == {"replace-me"}, "placeholders only, never a real secret"
    ignored = subprocess.run(["git", "check-ignore", "-q", "compose/.env"], cwd=ROOT)
    assert ignored.returncode == 0, "compose/.env must be ignored by git"


def test_compose_refuses_to_start_without_the_secrets(tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    with pytest.raises(AssertionError, match=r"POSTGRES_PASSWORD|ENCRYPTION_KEY|REDIS_PASSWORD"):
        compose_model(empty)


def test_ports_agree_from_the_image_to_nginx(services: dict[str, dict[str, Any]]) -> None:
    port = services["proxy"]["environment"]["PORT"]
    assert services["proxy"]["expose"][0] == port
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(rf"^EXPOSE {port}$", dockerfile, re.M)
    assert nginx_upstream_servers(NGINX_CONF) == [f"proxy:{port}"]
    listen = nginx_directive(nginx_block(NGINX_CONF, "server"), "listen")
    published = services["nginx"]["ports"][0]
    assert published["target"] == int(listen)
    # nginx runs the mounted file
    command = services["nginx"]["command"]
    conf_path = command[command.index("-c") + 1]
    assert any(
        v["target"] == conf_path and v["source"] == str(COMPOSE_DIR / "nginx.conf")
        for v in services["nginx"]["volumes"]
    )


def test_probe_and_metrics_paths_exist_in_the_app(services: dict[str, dict[str, Any]]) -> None:
    env = services["proxy"]["environment"]
    paths = app_paths(metrics_path=env["METRICS_PATH"])
    assert {"/live", "/ready", env["METRICS_PATH"]} <= paths
    dockerfile = (ROOT / "Dockerfile").read_text()
    probe = re.search(r"^HEALTHCHECK .*?'(/\w+)'", dockerfile, re.M | re.S)
    assert probe and probe.group(1) in paths


def test_nginx_forwards_exactly_what_the_app_serves_under_a_prefix(
    services: dict[str, dict[str, Any]],
) -> None:
    forwarded = set(re.findall(r"location\s+(/\S*)\s*\{\s*proxy_pass", NGINX_CONF))
    assert forwarded == {"/v1/"}
    env = known_settings(services["proxy"]["environment"])
    assert served_prefixes(env) == {"/v1/"}, "the public port serves no management API"


def test_the_management_api_has_an_internal_port_of_its_own(
    services: dict[str, dict[str, Any]],
) -> None:
    proxy = services["proxy"]
    settings = Settings.from_env(known_settings(proxy["environment"]))
    port = settings.management_port
    assert port is not None and port != settings.port
    assert management_prefixes(known_settings(proxy["environment"])) == {"/manage/"}
    # reachable on the private network, from no host port: only nginx publishes, PORT only
    assert str(port) in proxy["expose"]
    assert not proxy.get("ports")
    assert [p["target"] for p in services["nginx"]["ports"]] == [
        int(nginx_directive(nginx_block(NGINX_CONF, "server"), "listen"))
    ]
    upstream_ports = {s.rsplit(":", 1)[1] for s in nginx_upstream_servers(NGINX_CONF)}
    assert upstream_ports == {str(settings.port)}, "nginx never connects to the management port"
    assert not re.search(r"location\s+\S*manage", NGINX_CONF), "nginx has no /manage/ route"


def test_nginx_streams_and_trusts_nothing_the_client_forwards(
    model: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    server = nginx_block(NGINX_CONF, "server")
    assert nginx_directive(server, "proxy_http_version") == "1.1"
    assert nginx_directive(server, "proxy_set_header Connection") == '""'
    assert nginx_directive(server, "proxy_buffering") == "off"
    assert nginx_directive(server, "proxy_request_buffering") == "off"
    assert nginx_directive(server, "proxy_set_header X-Forwarded-For") == "$remote_addr"
    assert nginx_directive(server, "proxy_set_header X-Real-IP") == "$remote_addr"
    env = services["proxy"]["environment"]
    subnet = model["networks"]["backend"]["ipam"]["config"][0]["subnet"]
    assert env["TRUSTED_PROXIES"] == subnet, "the proxies trust nginx's network only"
    # nginx waits longer than the proxy does for a silent upstream, so the proxy answers it.
    read_timeout = parse_duration(env["UPSTREAM_READ_TIMEOUT"])
    assert nginx_seconds(nginx_directive(server, "proxy_read_timeout")) > read_timeout
    assert nginx_seconds(nginx_directive(server, "proxy_send_timeout")) > read_timeout
    assert nginx_size(nginx_directive(server, "client_max_body_size")) == int(
        env["MAX_REQUEST_BODY_BYTES"]
    )


def test_nginx_keeps_connections_to_the_proxies_without_racing_their_keepalive() -> None:
    upstream = nginx_block(NGINX_CONF, "upstream llm_proxy")
    assert int(nginx_directive(upstream, "keepalive")) > 0
    server = ProxyServer(Settings.from_env({}), workers=1)
    assert nginx_seconds(nginx_directive(upstream, "keepalive_timeout")) < server.cfg.keepalive


def test_a_draining_replica_is_never_killed_mid_stream(
    services: dict[str, dict[str, Any]],
) -> None:
    proxy = services["proxy"]
    env = proxy["environment"]
    longest = parse_duration(env["UPSTREAM_TIMEOUT"])
    grace = parse_duration(env["SHUTDOWN_GRACE_PERIOD"])
    assert 0 < longest <= grace < parse_duration(proxy["stop_grace_period"])


def test_nginx_accepts_the_configuration(tmp_path: Path) -> None:
    nginx = require_tool("nginx")
    conf = tmp_path / "nginx.conf"
    servers = [s.replace("proxy:", "127.0.0.1:") for s in nginx_upstream_servers(NGINX_CONF)]
    conf.write_text(nginx_for_loopback(NGINX_CONF, servers, "127.0.0.1:8080"))
    done = subprocess.run(
        [nginx, "-t", "-p", f"{tmp_path}/", "-e", "stderr", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr
