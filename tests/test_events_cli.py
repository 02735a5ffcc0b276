"""``llm-proxy manage events ...`` and the pipeline commands' argument checks."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from typer.testing import CliRunner

from admin.cli import app
from dispatcher.deadletter import dead_letter
from dispatcher.entries import Entry
from shared.config import Settings
from shared.store import make_store
from shared.streams import EVENT_FIELD
from tests.manage_server import ManagementServer
from tests.pipeline_kit import Owners, seed
from tests.test_cli import NO_DATABASE
from tests.test_cli import cli_env as cli_env  # the local/remote fixture


def cli(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(app, list(args), env=env)


def ok_json(env: dict[str, str], *args: str) -> Any:
    result = cli(env, *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def prepare(env: dict[str, str], events: int) -> Owners:
    """A migrated store with events and one dead letter (as a dispatcher would leave it)."""

    async def go() -> Owners:
        store = make_store(Settings.from_env(env))
        await store.open()
        await store.migrate()
        owners = await seed(store)
        await store.record_events([owners.event(i) for i in range(events)])
        lost = owners.event(99)
        letter = dead_letter(
            Entry("1-0", {EVENT_FIELD: lost.to_bytes()}, deliveries=9),
            stream_key="llm-proxy-events",
            reason="max_deliveries",
            error="delivered 9 times",
            consumer="d1",
            event_id=lost.event_id,
        )
        junk = dead_letter(
            Entry("2-0", {EVENT_FIELD: b"junk"}),
            stream_key="llm-proxy-events",
            reason="undecodable",
            error="not JSON",
            consumer="d1",
        )
        await store.record_batch([], [letter, junk])
        await store.close()
        return owners

    return asyncio.run(go())


def test_stats_tail_and_dead_letters(db_env: dict[str, str], cli_env: dict[str, str]) -> None:
    owners = prepare(db_env, 12)
    db_env = cli_env  # the same commands, here and through the management API
    stats = ok_json(db_env, "manage", "events", "stats")
    assert stats["events"] == 12 and stats["event_bus"] == "in-memory"
    assert stats["dead_letters"] == {"max_deliveries": 1, "undecodable": 1}
    tail = ok_json(db_env, "manage", "events", "tail", "--limit", "5")
    assert {e["request_id"] for e in tail} == {f"req-{i}" for i in range(7, 12)}  # the latest
    assert [e["ts"] for e in tail] == sorted(e["ts"] for e in tail)  # oldest first
    # a time alone as the cursor: from then on (the events were recorded just now)
    since = ok_json(db_env, "manage", "events", "tail", "--since", "1h", "--limit", "50")
    assert [e["request_id"] for e in since] == [f"req-{i}" for i in range(12)]
    assert ok_json(db_env, "manage", "events", "tail", "--since", "2999-01-01") == []
    mine = ok_json(db_env, "manage", "events", "tail", "--token-id", owners.tokens[0].id)
    assert len(mine) == 4 and {e["token_id"] for e in mine} == {owners.tokens[0].id}
    letters = ok_json(db_env, "manage", "events", "dead-letters")
    assert [x["reason"] for x in letters] == ["max_deliveries", "undecodable"]
    assert letters[1]["payload"] == "junk"


def test_replay_records_what_it_can_and_reports_the_rest(db_env: dict[str, str]) -> None:
    owners = prepare(db_env, 3)
    result = cli(db_env, "manage", "events", "replay-dead-letters", "--json")
    assert result.exit_code == 1  # one dead letter is still not an event
    report = json.loads(result.stdout)
    assert report["replayed"] == 1 and report["inserted"] == 1
    (error,) = report["failed"].values()
    assert error.startswith("not JSON")
    stats = ok_json(db_env, "manage", "events", "stats")
    assert stats["events"] == 4 and stats["dead_letters"] == {"undecodable": 1}
    token = owners.tokens[99 % len(owners.tokens)].id
    shown = ok_json(db_env, "manage", "token", "show", token)
    assert shown["request_count"] == owners.expected[token]


def test_stats_show_the_stream_with_redis_streams(
    db_env: dict[str, str], redis_env: dict[str, str], unique_prefix: str
) -> None:
    import redis

    key = f"{unique_prefix}events"
    client = redis.Redis.from_url(f"redis://{redis_env['REDIS_ADDR']}")
    client.xgroup_create(key, "llm-proxy-dispatchers", id="0", mkstream=True)
    client.xadd(key, {EVENT_FIELD: b"x"})
    try:
        env = {
            **db_env,
            **redis_env,
            "LLM_PROXY_EVENT_BUS": "redis-streams",
            "REDIS_STREAM_KEY": key,
        }
        with ManagementServer(Settings.from_env({**env, "MANAGEMENT_TOKEN": "t"})) as server:
            remote = {**NO_DATABASE, "LLM_PROXY_API_URL": server.url, "MANAGEMENT_TOKEN": "t"}
            for where in (env, remote):  # read here, and by the deployment for a remote CLI
                stats = ok_json(where, "manage", "events", "stats")
                assert stats["stream"]["length"] == 1
                (group,) = stats["stream"]["groups"]
                assert group["name"] == "llm-proxy-dispatchers" and group["lag"] == 1
    finally:
        client.delete(key)
        client.close()


def test_pipeline_commands_reject_bad_arguments_in_one_line() -> None:
    cases = [
        (("dispatcher", "--claim-idle", "soon"), {}, "--claim-idle must be a duration"),
        (("dispatcher",), {"DISPATCHER_BATCH_SIZE": "0"}, "DISPATCHER_BATCH_SIZE must be"),
        (("dispatcher",), {"DISPATCHER_HTTP_ADDR": "nowhere"}, "DISPATCHER_HTTP_ADDR must be"),
        (("worker",), {"EVENT_SINK_WEBHOOK_URL": "ftp://x"}, "EVENT_SINK_WEBHOOK_URL must be"),
        (("dispatcher", "--group", " "), {}, "--group must be"),
    ]
    for args, env, message in cases:
        result = cli(env, *args)
        assert result.exit_code == 1, (args, result.stdout, result.stderr)
        errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], result.stderr
    assert cli({}, "dispatcher", "--batch-size", "0").exit_code == 2  # Typer's own range check


def test_replay_refuses_what_the_dispatcher_refused_as_oversized(db_env: dict[str, str]) -> None:
    """An entry over the dispatcher's size cap stays a dead letter: replay applies the same
    rules as the dispatcher, so it cannot sneak in what the pipeline turned away."""

    async def go() -> None:
        store = make_store(Settings.from_env(db_env))
        await store.open()
        await store.migrate()
        owners = await seed(store)
        big = owners.event(1)
        big.model = "m" * (70 * 1024)  # a storable event, but an entry far over the cap
        letter = dead_letter(
            Entry("3-0", {EVENT_FIELD: big.to_bytes()}),
            stream_key="llm-proxy-events",
            reason="undecodable",
            error="entry too large",
            consumer="d1",
        )
        await store.record_batch([], [letter])
        await store.close()

    asyncio.run(go())
    result = cli(db_env, "manage", "events", "replay-dead-letters", "--json")
    assert result.exit_code == 1, result.stdout
    report = json.loads(result.stdout)
    assert report["inserted"] == 0 and report["replayed"] == 0
    (error,) = report["failed"].values()
    assert "more than 65536" in error
    assert ok_json(db_env, "manage", "events", "stats")["events"] == 0


def test_remote_replay_hands_dead_letters_back_to_the_stream(
    db_env: dict[str, str], redis_env: dict[str, str], unique_prefix: str
) -> None:
    import redis

    prepare(db_env, 0)
    key = f"{unique_prefix}events"
    env = {**db_env, **redis_env, "LLM_PROXY_EVENT_BUS": "redis-streams", "REDIS_STREAM_KEY": key}
    client = redis.Redis.from_url(f"redis://{redis_env['REDIS_ADDR']}")
    try:
        with ManagementServer(Settings.from_env({**env, "MANAGEMENT_TOKEN": "t"})) as server:
            remote = {**NO_DATABASE, "LLM_PROXY_API_URL": server.url, "MANAGEMENT_TOKEN": "t"}
            report = ok_json(
                remote, "manage", "events", "replay-dead-letters", "--reason", "max_deliveries"
            )
            assert report["requeued"] == 1 and report["stream"] == key
            ((_, fields),) = client.xrange(key)
            lost = ok_json(db_env, "manage", "events", "dead-letters", "--include-replayed")[0]
            assert fields[EVENT_FIELD] == lost["payload"].encode() and lost["replayed_at"]
            assert ok_json(remote, "manage", "events", "stats")["dead_letters"] == {
                "undecodable": 1
            }
        with ManagementServer(Settings.from_env({**db_env, "MANAGEMENT_TOKEN": "t"})) as plain:
            remote = {**NO_DATABASE, "LLM_PROXY_API_URL": plain.url, "MANAGEMENT_TOKEN": "t"}
            result = cli(remote, "manage", "events", "replay-dead-letters")
            assert result.exit_code == 1 and "no event stream" in result.stderr
    finally:
        client.delete(key)
        client.close()
