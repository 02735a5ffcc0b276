"""Settings: defaults, parsing, and one clear line for every bad value."""

from __future__ import annotations

import pytest

from shared.config import Settings, parse_duration
from shared.errors import ConfigError


def test_defaults_need_no_environment() -> None:
    s = Settings.from_env({})
    assert s.db_driver == "sqlite"
    assert s.sqlite_path == "llm-proxy.db"
    assert s.database_pool_size == 10
    assert s.database_max_idle_conns == 5
    assert s.database_conn_max_lifetime == 3600.0
    assert s.redis_addr == "localhost:6379"
    assert s.redis.db == 0
    assert not s.management_token
    assert s.log_level == "info"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DATABASE_POOL_SIZE": "abc"}, "DATABASE_POOL_SIZE must be an integer >= 1, got 'abc'"),
        ({"DATABASE_POOL_SIZE": "0"}, "DATABASE_POOL_SIZE must be an integer >= 1, got '0'"),
        ({"DB_DRIVER": "mysql"}, "DB_DRIVER must be one of sqlite, postgres, got 'mysql'"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL must be one of debug, info, warning, error"),
        (
            {"DATABASE_CONN_MAX_LIFETIME": "forever"},
            "DATABASE_CONN_MAX_LIFETIME must be a duration",
        ),
        ({"REDIS_DB": "-1"}, "REDIS_DB must be an integer >= 0, got '-1'"),
        (
            {"DB_DRIVER": "postgres", "DATABASE_URL": "/tmp/x.db"},
            "DATABASE_URL must be a postgres:// URL when DB_DRIVER=postgres",
        ),
        ({"DATABASE_URL": "postgres://h/db"}, "DB_DRIVER must be postgres"),
        ({"UPSTREAM_MAX_HEADER_BYTES": "10"}, "UPSTREAM_MAX_HEADER_BYTES must be a size of at"),
        ({"UPSTREAM_MAX_HEADERS": "0"}, "UPSTREAM_MAX_HEADERS must be an integer >= 1"),
        ({"HTTPS_PROXY": "socks5://p:1080"}, "HTTPS_PROXY must be an http://host:port proxy URL"),
        ({"HTTP_PROXY": "http://p:notaport"}, "HTTP_PROXY must be an http://host:port proxy URL"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_secret_values_never_show() -> None:
    s = Settings.from_env({"MANAGEMENT_TOKEN": "hunter2-very-secret"})
    assert s.management_token.get() == "hunter2-very-secret"
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s.management_token)


def test_postgres_url_password_is_redacted_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"DB_DRIVER": "postgres", "DATABASE_URL": "mysql://u:pw@h/db"})
    assert "pw" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("1h", 3600), ("1h30m", 5400), ("500ms", 0.5), ("2d", 172800), ("45", 45)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1x", "-5", "1h 2m", "m30"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_sqlite_url_forms() -> None:
    assert Settings.from_env({"DATABASE_URL": "sqlite:///var/x.db"}).sqlite_path == "var/x.db"
    assert Settings.from_env({"DATABASE_URL": "sqlite:////abs/x.db"}).sqlite_path == "/abs/x.db"
    assert Settings.from_env({"DATABASE_URL": "data/x.db"}).sqlite_path == "data/x.db"


def test_egress_proxy_credentials_never_show() -> None:
    s = Settings.from_env({"HTTPS_PROXY": "http://egress:pa55word@proxy.internal:3128"})
    assert "pa55word" not in repr(s)
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"HTTP_PROXY": "ftp://egress:pa55word@proxy.internal"})
    assert "pa55word" not in str(info.value)
