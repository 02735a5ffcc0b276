"""Pure pieces of the event pipeline: entry checks, key names, settings and options."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from dispatcher.entries import Entry, canonical_uuid, decode
from dispatcher.options import Options
from shared.config import ConfigError, Settings
from shared.errors import REJECTION_CODES
from shared.events import RequestEvent
from shared.streams import EVENT_FIELD, StreamKeys, hash_tag

EVENT_ID = "01900000-0000-7000-8000-000000000001"


def entry(**fields: object) -> Entry:
    base: dict[str, object] = {
        "event_id": EVENT_ID,
        "request_id": "r",
        "ts": 1_700_000_000.5,
        "project_id": "",
        "token_id": "",
        "method": "GET",
        "path": "/v1/models",
        "status": 200,
    }
    base.update(fields)
    return Entry("1-0", {EVENT_FIELD: RequestEvent(**base).to_bytes()})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "uuid_ids", "error"),
    [
        ({}, True, None),
        ({"event_id": EVENT_ID.upper()}, True, None),
        ({"event_id": "abc"}, True, "event_id is not a UUID"),
        ({"event_id": "abc"}, False, None),
        ({"token_id": "sk-llmp-oops"}, True, "token_id is not a UUID"),
        ({"status": 2**31}, False, "status is out of range"),
        ({"response_bytes": 2**63}, False, "response_bytes is out of range"),
        ({"ts": -1.0}, False, "ts is not a plausible epoch time"),
        ({"ts": 1e12}, False, "ts is not a plausible epoch time"),
        ({"model": "a\x00b"}, False, "model contains a NUL character"),
    ],
)
def test_decode_checks_what_the_columns_can_hold(
    fields: dict[str, object], uuid_ids: bool, error: str | None
) -> None:
    if error is None:
        event = decode(entry(**fields), uuid_ids=uuid_ids)
        if uuid_ids:
            assert event.event_id == EVENT_ID  # canonical form, as Postgres returns it
    else:
        with pytest.raises(ValueError, match=error):
            decode(entry(**fields), uuid_ids=uuid_ids)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({}, "deleted from the stream"),
        ({b"x": b"1"}, "has no 'e' field"),
        ({EVENT_FIELD: b"{" * 70_000}, "more than 65536"),
        ({EVENT_FIELD: b"[]"}, "not an object"),
        ({EVENT_FIELD: b'{"event_id": 1}'}, "wrong type"),
    ],
)
def test_undecodable_entries_say_why(fields: dict[bytes, bytes], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        decode(Entry("1-0", fields), uuid_ids=False)


def test_canonical_uuid() -> None:
    assert canonical_uuid(EVENT_ID) == EVENT_ID
    assert canonical_uuid(EVENT_ID.replace("-", "")) == EVENT_ID
    assert canonical_uuid("nope") is None


@pytest.mark.parametrize("stream", ["llm-proxy-events", "tenant-a:events", "{shared}events"])
def test_every_key_of_the_pipeline_is_in_the_stream_slot(stream: str) -> None:
    keys = StreamKeys(stream)
    names = [keys.stream, keys.jobs_namespace, keys.retention_lock, keys.jobs_namespace + ":q"]
    assert len({key_slot(name.encode()) for name in names}) == 1
    assert keys.stream == stream  # the operator's name is used unchanged


def test_hash_tag_follows_the_cluster_rules() -> None:
    assert hash_tag("plain") == "plain"
    assert hash_tag("{a}b") == "a"
    assert hash_tag("x{}y{z}") == "x{}y{z}"  # an empty tag does not count
    assert hash_tag("{llm-proxy-events}:jobs") == "llm-proxy-events"


@pytest.mark.parametrize(
    ("text", "value"),
    [("134217728", 134217728), ("512KiB", 512 * 1024), ("128MiB", 128 << 20), ("1GB", 10**9)],
)
def test_spool_size_setting(text: str, value: int) -> None:
    assert Settings.from_env({"EVENT_SPOOL_MAX_BYTES": text}).event_spool_max_bytes == value


def test_bad_pipeline_settings_name_the_variable() -> None:
    for env, name in (
        ({"EVENT_SPOOL_MAX_BYTES": "lots"}, "EVENT_SPOOL_MAX_BYTES"),
        ({"EVENT_BUS_FAILURE_MODE": "ignore"}, "EVENT_BUS_FAILURE_MODE"),
        ({"DISPATCHER_CLAIM_IDLE": "later"}, "DISPATCHER_CLAIM_IDLE"),
        ({"REDIS_STREAM_KEY": "two words"}, "REDIS_STREAM_KEY"),
    ):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env(env)


def test_usage_stats_buffer_falls_back_to_cache_stats_buffer() -> None:
    assert Settings.from_env({}).usage_stats_buffer == 1000
    assert Settings.from_env({"CACHE_STATS_BUFFER_SIZE": "5000"}).usage_stats_buffer == 5000
    both = {"CACHE_STATS_BUFFER_SIZE": "5000", "USAGE_STATS_BUFFER_SIZE": "200"}
    assert Settings.from_env(both).usage_stats_buffer == 200


def test_flags_override_environment_which_overrides_defaults() -> None:
    settings = Settings.from_env(
        {"DISPATCHER_BATCH_SIZE": "500", "DISPATCHER_CLAIM_IDLE": "2m", "REDIS_CONSUMER_GROUP": "g"}
    )
    opts = Options.from_settings(settings, batch_size=None, claim_idle=5.0, consumer="me")
    assert (opts.batch_size, opts.claim_idle, opts.group, opts.consumer) == (500, 5.0, "g", "me")
    assert opts.buffer == 2000 and opts.max_deliveries == 5 and opts.block_ms == 1000
    assert Options.from_settings(settings, buffer=10).buffer == 500  # room for one whole batch
    assert "-" in Options.from_settings(Settings.from_env({})).consumer  # host-pid


def test_rejections_are_the_proxys_own_refusals() -> None:
    assert {"rate_limit_exceeded", "quota_exceeded", "overloaded"} <= REJECTION_CODES
