"""REDIS_ADDR and its companions parsed once into RedisSettings: every form, every conflict,
one clear line for a bad value, and a password that never shows."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.config import ConfigError, RedisSettings, Secret, Settings


def parsed(**env: str) -> RedisSettings:
    return Settings.from_env(env).redis


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ("localhost", 6379, 0, "", "", False)),
        ({"REDIS_ADDR": "redis.internal"}, ("redis.internal", 6379, 0, "", "", False)),
        ({"REDIS_ADDR": "10.0.0.5:6380"}, ("10.0.0.5", 6380, 0, "", "", False)),
        ({"REDIS_ADDR": "[::1]:6390"}, ("::1", 6390, 0, "", "", False)),
        ({"REDIS_ADDR": "redis://h:1/3"}, ("h", 1, 3, "", "", False)),
        ({"REDIS_ADDR": "redis://h/"}, ("h", 6379, 0, "", "", False)),
        ({"REDIS_ADDR": "REDISS://u:p@h:2/4"}, ("h", 2, 4, "u", "p", True)),
        ({"REDIS_ADDR": "redis://:p%40ss@h"}, ("h", 6379, 0, "", "p@ss", False)),
        ({"REDIS_ADDR": "h:1", "REDIS_DB": "5"}, ("h", 1, 5, "", "", False)),
        ({"REDIS_ADDR": "redis://h/5", "REDIS_DB": "5"}, ("h", 6379, 5, "", "", False)),
        (
            {"REDIS_ADDR": "h", "REDIS_USERNAME": "app", "REDIS_PASSWORD": "pw"},
            ("h", 6379, 0, "app", "pw", False),
        ),
        (
            {"REDIS_ADDR": "redis://app@h", "REDIS_PASSWORD": "pw"},
            ("h", 6379, 0, "app", "pw", False),
        ),
    ],
)
def test_address_forms(env: dict[str, str], expected: tuple[object, ...]) -> None:
    redis = parsed(**env)
    got = (redis.host, redis.port, redis.db, redis.username, redis.password.get(), redis.tls)
    assert got == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REDIS_ADDR": "redis://h/3", "REDIS_DB": "4"}, "REDIS_DB=4 and REDIS_ADDR's 3 differ"),
        (
            {"REDIS_ADDR": "redis://bob@h", "REDIS_USERNAME": "alice"},
            "REDIS_USERNAME=alice and REDIS_ADDR's bob differ",
        ),
        (
            {"REDIS_ADDR": "redis://:one@h", "REDIS_PASSWORD": "two"},
            "REDIS_PASSWORD and the password in REDIS_ADDR differ",
        ),
        ({"REDIS_ADDR": "http://h:1"}, "REDIS_ADDR must be host:port or a redis://"),
        ({"REDIS_ADDR": "unix:///tmp/redis.sock"}, "REDIS_ADDR must be host:port or a redis://"),
        ({"REDIS_ADDR": "h:port"}, "REDIS_ADDR has a bad port"),
        ({"REDIS_ADDR": "h:99999"}, "REDIS_ADDR has a bad port"),
        ({"REDIS_ADDR": "redis://h/zero"}, "REDIS_ADDR's path must be a database number"),
        ({"REDIS_ADDR": "redis://h?db=3"}, "REDIS_ADDR must not carry ?options"),
        ({"REDIS_ADDR": "a:1,b:2"}, "several nodes need REDIS_MODE=cluster or sentinel"),
        ({"REDIS_MODE": "cluster", "REDIS_ADDR": "a:1,,b:2"}, "REDIS_ADDR has an empty node"),
        ({"REDIS_MODE": "cluster", "REDIS_ADDR": "a:1,b:x"}, "REDIS_ADDR has a bad port"),
        ({"REDIS_MODE": "cluster", "REDIS_ADDR": "redis://a,b/2"}, "has only database 0"),
        ({"REDIS_MODE": "cluster", "REDIS_DB": "1"}, "has only database 0"),
        ({"REDIS_MODE": "sentinel", "REDIS_ADDR": "a,b"}, "needs REDIS_SENTINEL_MASTER"),
        ({"REDIS_SENTINEL_MASTER": "m"}, "REDIS_MODE is not sentinel"),
        ({"REDIS_MODE": "ring"}, "REDIS_MODE must be one of standalone, cluster, sentinel"),
        ({"REDIS_ADDR": "user:pw@h"}, "credentials and a database need the URL form"),
        ({"REDIS_ADDR": "redis://"}, "REDIS_ADDR must be host:port"),
        ({"REDIS_ADDR": "h", "REDIS_TLS_CA_FILE": "/ca.pem"}, "not a rediss:// URL"),
        (
            {"REDIS_ADDR": "rediss://h", "REDIS_TLS_CA_FILE": "/no/such/ca.pem"},
            "REDIS_TLS_CA_FILE cannot be used",
        ),
        ({"REDIS_DB": "-1"}, "REDIS_DB must be an integer >= 0"),
    ],
)
def test_a_bad_address_is_one_clear_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    text = str(caught.value)
    assert message in text
    assert "\n" not in text


@pytest.mark.parametrize(
    ("env", "nodes", "auth", "db", "tls"),
    [
        ({"REDIS_MODE": "cluster", "REDIS_ADDR": "a:7000"}, [("a", 7000)], ("", ""), 0, False),
        (
            {"REDIS_MODE": "cluster", "REDIS_ADDR": " a:7000, b ,[::1]:7002 "},
            [("a", 7000), ("b", 6379), ("::1", 7002)],
            ("", ""),
            0,
            False,
        ),
        (
            {"REDIS_MODE": "cluster", "REDIS_ADDR": "rediss://app:p%40w@a:1,b:2"},
            [("a", 1), ("b", 2)],
            ("app", "p@w"),
            0,
            True,
        ),
        (
            {
                "REDIS_MODE": "sentinel",
                "REDIS_ADDR": "redis://s1:26379,s2:26380/3",
                "REDIS_SENTINEL_MASTER": "main",
                "REDIS_PASSWORD": "pw",
            },
            [("s1", 26379), ("s2", 26380)],
            ("", "pw"),
            3,
            False,
        ),
    ],
)
def test_node_lists(
    env: dict[str, str],
    nodes: list[tuple[str, int]],
    auth: tuple[str, str],
    db: int,
    tls: bool,
) -> None:
    """Cluster seed nodes and sentinels: one scheme, user and database for the whole list,
    each node's port its own."""
    redis = parsed(**env)
    assert list(redis.nodes) == nodes
    assert (redis.host, redis.port) == nodes[0]
    assert (redis.username, redis.password.get(), redis.db, redis.tls) == (*auth, db, tls)
    assert redis.mode == env["REDIS_MODE"]
    assert "p@w" not in redis.describe() and "pw" not in redis.describe()
    one = redis.with_node("10.0.0.9", 7005)
    assert (one.mode, one.nodes, one.username, one.db) == (
        "standalone",
        (("10.0.0.9", 7005),),
        redis.username,
        redis.db,
    )


def test_standalone_is_one_node() -> None:
    redis = parsed(REDIS_ADDR="h:1")
    assert (redis.mode, redis.nodes, redis.sentinel_master) == ("standalone", (("h", 1),), "")


def test_a_password_never_shows(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"REDIS_ADDR": "redis://u:hunter2@h:notaport"})
    assert "hunter2" not in str(caught.value)
    redis = parsed(REDIS_ADDR="rediss://u:hunter2@h:1/2")
    assert "hunter2" not in repr(redis)
    assert "hunter2" not in repr(Settings.from_env({"REDIS_PASSWORD": "hunter2"}))
    assert redis.describe() == "rediss://u@h:1/2"


def test_replace_derives_the_redis_settings_again() -> None:
    settings = Settings.from_env({"REDIS_ADDR": "h:1"}).replace(redis_addr="redis://other:2/3")
    assert (settings.redis.host, settings.redis.port, settings.redis.db) == ("other", 2, 3)


_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)


@given(
    tls=st.booleans(),
    host=st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z0-9-]{1,10}){0,3}", fullmatch=True),
    port=st.integers(1, 65535),
    db=st.none() | st.integers(0, 10_000),
    user=_text,
    password=_text,
)
def test_any_url_parses_back_to_its_parts(
    tls: bool, host: str, port: int, db: int | None, user: str, password: str
) -> None:
    userinfo = ""
    if user or password:
        userinfo = quote(user, safe="") + (":" + quote(password, safe="") if password else "") + "@"
    path = f"/{db}" if db is not None else ""
    url = f"{'rediss' if tls else 'redis'}://{userinfo}{host}:{port}{path}"
    redis = RedisSettings.parse(url)
    assert (redis.tls, redis.host, redis.port, redis.db) == (tls, host, port, db or 0)
    assert (redis.username, redis.password) == (user, Secret(password))
