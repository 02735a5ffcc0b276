"""Profiles, the tuning guide's variables, and `llm-proxy config show|check`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from shared.config import Settings, declared_fields, explain
from shared.errors import ConfigError
from shared.profiles import PROFILES, SEED_SAME_NAME, SEED_VARIABLES
from tests.proxy_process import ProxyProcess, provision
from tests.upstream_fake import FakeUpstream

SEED_003 = Path(__file__).resolve().parents[2] / "shared" / "seeds" / "003_269c797645d383c8.txt"


def test_a_profile_sets_presets_and_explicit_variables_win() -> None:
    s = Settings.from_env({"LLM_PROXY_PROFILE": "edge", "POOL_MAX_CONNECTIONS": "7"})
    assert s.pool_min_connections == 1
    assert s.cache_max_size == 100
    assert s.pool_max_connections == 7
    _, rows, _ = explain({"LLM_PROXY_PROFILE": "edge", "POOL_MAX_CONNECTIONS": "7"})
    sources = {r.variable: r.source for r in rows}
    assert sources["POOL_MIN_CONNECTIONS"] == "profile:edge"
    assert sources["POOL_MAX_CONNECTIONS"] == "environment"
    assert sources["DB_DRIVER"] == "default"


def test_later_profiles_win_and_unknown_ones_are_refused() -> None:
    s = Settings.from_env({"LLM_PROXY_PROFILE": "high-throughput, strict"})
    assert (s.pool_max_connections, s.ip_rate_limit, s.global_rate_limit) == (100, 30, 100)
    s = Settings.from_env({"LLM_PROXY_PROFILE": "edge,low-latency"})
    assert s.pool_max_connections == 50
    with pytest.raises(ConfigError, match=r"LLM_PROXY_PROFILE must be a comma-separated list of"):
        Settings.from_env({"LLM_PROXY_PROFILE": "fastest"})


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_parses(name: str) -> None:
    settings, rows, _ = explain({"LLM_PROXY_PROFILE": name})
    assert settings.profile == (name,)
    assert {r.variable for r in rows if r.source == f"profile:{name}"} == set(PROFILES[name])


def test_defaults_do_not_stall_one_backend() -> None:
    s = Settings.from_env({})
    assert s.global_rate_limit == 0
    assert s.ip_rate_limit == 1200


def test_guide_names_map_onto_our_settings() -> None:
    s = Settings.from_env({"CACHE_ENABLED": "0", "CACHE_TTL_MS": "1500", "METRICS_ENABLED": "no"})
    assert (s.http_cache_enabled, s.http_cache_default_ttl, s.enable_metrics) == (
        False,
        1.5,
        False,
    )
    _, rows, _ = explain({"CACHE_TTL_MS": "1500"})
    assert {r.variable: r.source for r in rows}["HTTP_CACHE_DEFAULT_TTL"] == (
        "environment:CACHE_TTL_MS"
    )
    # a guide name overrides a profile's preset, like any explicit variable
    s = Settings.from_env({"LLM_PROXY_PROFILE": "development", "CACHE_ENABLED": "1"})
    assert s.http_cache_enabled is True


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"STREAM_BUFFER_POOL_ENABLED": "sure"},
            "STREAM_BUFFER_POOL_ENABLED must be true or false, got 'sure'",
        ),
        (
            {"METRICS_RETENTION_MS": "soon"},
            "METRICS_RETENTION_MS must be an integer >= 0, got 'soon'",
        ),
        ({"CACHE_ENABLED": "maybe"}, "CACHE_ENABLED must be true or false, got 'maybe'"),
        (
            {"CACHE_TTL_MS": "1000", "HTTP_CACHE_DEFAULT_TTL": "5m"},
            "CACHE_TTL_MS and HTTP_CACHE_DEFAULT_TTL are both set",
        ),
    ],
)
def test_guide_variables_we_cannot_honour_stop_the_process(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert message in info.value.message


def test_guide_variables_without_effect_are_named_not_ignored() -> None:
    env = {"STREAM_BUFFER_POOL_ENABLED": "1", "RATE_LIMIT_BATCH_INTERVAL_MS": "1000"}
    _, _, notices = explain(env)
    assert notices == [
        "RATE_LIMIT_BATCH_INTERVAL_MS has no effect here: limits and quotas are counted "
        "exactly, one atomic check per request; nothing is batched",
        "STREAM_BUFFER_POOL_ENABLED has no effect here: Python's byte strings are not pooled; "
        "there is no buffer pool to switch",
    ]


def test_every_variable_of_the_tuning_guide_is_accounted_for() -> None:
    if not SEED_003.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{SEED_003} is missing")
        pytest.skip("the operator guides are not beside this checkout")
    named = set(re.findall(r"\b([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)=", SEED_003.read_text()))
    named |= set(re.findall(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)`", SEED_003.read_text()))
    ours = {f.metadata["env"] for f in declared_fields()}
    accounted = set(SEED_SAME_NAME) | {s.name for s in SEED_VARIABLES}
    assert set(SEED_SAME_NAME) <= ours
    assert not {s.name for s in SEED_VARIABLES} & ours
    assert named - accounted - ours == set()


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "admin", "config", *args],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_config_show_names_each_source_and_masks_secrets() -> None:
    secret = "mgmt-very-secret-value-123"
    done = _cli(
        {"LLM_PROXY_PROFILE": "strict", "MANAGEMENT_TOKEN": secret, "CACHE_TTL_MS": "2000"},
        "show",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    assert secret not in done.stdout + done.stderr
    rows = {r["variable"]: r for r in json.loads(done.stdout)["settings"]}
    assert rows["MANAGEMENT_TOKEN"] == {
        "variable": "MANAGEMENT_TOKEN",
        "value": "***",
        "source": "environment",
    }
    assert rows["IP_RATE_LIMIT"]["value"] == "30"
    assert rows["IP_RATE_LIMIT"]["source"] == "profile:strict"
    assert rows["HTTP_CACHE_DEFAULT_TTL"]["value"] == "2"
    assert rows["PORT"]["source"] == "default"


def test_config_check_validates_without_starting_anything(tmp_path: Path) -> None:
    ok = _cli({"STREAM_BUFFER_POOL_ENABLED": "1"}, "check")
    assert ok.returncode == 0
    assert ok.stdout.strip() == "configuration ok"
    assert "notice: STREAM_BUFFER_POOL_ENABLED has no effect here" in ok.stderr
    bad = _cli({"IP_RATE_LIMIT": "lots"}, "check")
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        "error: IP_RATE_LIMIT must be an integer >= 0, got 'lots'"
    ]
    # nothing was created: no database, no key file
    assert list(tmp_path.iterdir()) == []


def test_server_refuses_conflicting_names_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "admin", "server"],
        env={
            "PATH": os.environ["PATH"],
            "CACHE_ENABLED": "1",
            "HTTP_CACHE_ENABLED": "false",
            "PORT": "0",
        },
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "error: CACHE_ENABLED and HTTP_CACHE_ENABLED are both set; set only HTTP_CACHE_ENABLED"
    )


def test_a_running_server_honours_profile_and_guide_names(tmp_path: Path) -> None:
    """strict profile: 30 a minute per address; CACHE_ENABLED=0: every GET reaches the upstream;
    METRICS_ENABLED=false: no /metrics; a no-effect variable is logged once at start."""
    fake = FakeUpstream().start()
    env = {
        "LLM_PROXY_PROFILE": "strict",
        "CACHE_ENABLED": "0",
        "METRICS_ENABLED": "false",
        "STREAM_BUFFER_POOL_ENABLED": "1",
    }
    proxy = None
    try:
        creds = provision(env, tmp_path, fake.base_url)
        proxy = ProxyProcess(env=env, cwd=tmp_path, workers=1).start()
        auth = {"Authorization": f"Bearer {creds.token}"}
        with httpx.Client(base_url=proxy.url, headers=auth, timeout=30) as client:
            statuses = [client.get("/v1/models").status_code for _ in range(31)]
            assert statuses == [200] * 30 + [429]
            assert client.get("/metrics").status_code == 404
        assert len([r for r in fake.requests if r.path == "/v1/models"]) == 30
        proxy.stop()
        notices = [line for line in proxy.logs().splitlines() if "STREAM_BUFFER_POOL" in line]
        assert len(notices) == 1
        assert "has no effect here" in notices[0]
    finally:
        if proxy is not None:
            proxy.stop()
        fake.stop()


def test_cache_ttl_ms_sets_how_long_a_response_is_kept(tmp_path: Path) -> None:
    fake = FakeUpstream().start()
    env = {"CACHE_TTL_MS": "1000", "GLOBAL_RATE_LIMIT": "0", "IP_RATE_LIMIT": "0"}
    proxy = None
    try:
        creds = provision(env, tmp_path, fake.base_url)
        proxy = ProxyProcess(env=env, cwd=tmp_path, workers=1).start()
        auth = {"Authorization": f"Bearer {creds.token}"}
        with httpx.Client(base_url=proxy.url, headers=auth, timeout=30) as client:
            assert client.get("/v1/models").headers["x-proxy-cache"] == "miss"
            time.sleep(1.5)  # longer than CACHE_TTL_MS; the default (5 minutes) would still hit
            assert client.get("/v1/models").headers["x-proxy-cache"] == "miss"
        assert len([r for r in fake.requests if r.path == "/v1/models"]) == 2
    finally:
        if proxy is not None:
            proxy.stop()
        fake.stop()
