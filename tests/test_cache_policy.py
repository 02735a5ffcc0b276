"""The cache's pure core: header parsers (tables and Hypothesis), decisions, keys, entry format."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.cache.entry import CacheEntry, decode, decode_marker, encode, encode_marker
from proxy.cache.headers import (
    MAX_SECONDS,
    delta_seconds,
    etag_matches,
    format_http_date,
    not_modified,
    parse_cache_control,
    parse_http_date,
    parse_ttl,
    parse_vary,
)
from proxy.cache.policy import (
    BYPASS,
    DEFAULT,
    EXPLICIT,
    LOOKUP,
    NEVER,
    OPT_IN,
    REVALIDATE,
    cache_key,
    read_request,
    request_rules,
    response_rules,
    reuse_rule,
    stored_headers,
    variant_id,
)

NOW = 1_700_000_000.0

# --- parsers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("public, max-age=60", {"public": None, "max-age": "60"}),
        ("MAX-AGE=10, No-Store", {"max-age": "10", "no-store": None}),
        (
            'private="set-cookie, x-foo", max-age=5',
            {"private": "set-cookie, x-foo", "max-age": "5"},
        ),
        ("max-age=1, max-age=2", {"max-age": "1"}),
        (",, no-store ,,", {"no-store": None}),
        ('no-cache="a\\"b"', {"no-cache": 'a"b'}),
        ("max-age = 7", {"max-age": "7"}),
        ('s-maxage="30"', {"s-maxage": "30"}),
        ("max-age=", {"max-age": ""}),
        ('x="unterminated, y', {"x": "unterminated, y"}),
    ],
)
def test_parse_cache_control(text: str, expected: dict[str, str | None]) -> None:
    assert parse_cache_control(text) == expected


TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=12)
QUOTED = st.text(alphabet=st.characters(codec="ascii", exclude_characters='"\\'), max_size=20)


@given(st.text(max_size=200))
def test_parse_cache_control_is_total(text: str) -> None:
    result = parse_cache_control(text)
    assert all(name == name.lower() and name for name in result)


@given(st.lists(st.tuples(TOKEN, st.one_of(st.none(), TOKEN, QUOTED.map(lambda q: f'"{q}"')))))
def test_parse_cache_control_reads_back_what_was_written(
    directives: list[tuple[str, str | None]],
) -> None:
    text = ", ".join(name if value is None else f"{name}={value}" for name, value in directives)
    expected: dict[str, str | None] = {}
    for name, value in directives:
        if value is not None and value.startswith('"'):
            value = value[1:-1]
        expected.setdefault(name, value)
    assert parse_cache_control(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("60", 60),
        (" 60 ", 60),
        ("0", 0),
        ("-1", None),
        ("1.5", None),
        ("abc", None),
        ("", None),
        (None, None),
        ("٣", None),
        ("99999999999999999999", MAX_SECONDS),
    ],
)
def test_delta_seconds(text: str | None, expected: int | None) -> None:
    assert delta_seconds(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("60", 60.0),
        ("0.5", 0.5),
        ("0", None),
        ("-3", None),
        ("nan", None),
        ("inf", None),
        ("abc", None),
        ("1" * 40, None),
        ("1e12", float(MAX_SECONDS)),
    ],
)
def test_parse_ttl(text: str, expected: float | None) -> None:
    assert parse_ttl(text) == expected


@given(st.text(max_size=40))
def test_parse_ttl_is_total(text: str) -> None:
    value = parse_ttl(text)
    assert value is None or 0 < value <= MAX_SECONDS


@pytest.mark.parametrize(
    "text",
    ["Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"],
)
def test_parse_http_date_accepts_the_three_formats(text: str) -> None:
    assert parse_http_date(text) == 784111777.0


@given(st.text(max_size=60))
def test_parse_http_date_is_total(text: str) -> None:
    parse_http_date(text)


@given(st.integers(min_value=0, max_value=4_000_000_000))
def test_http_dates_round_trip(epoch: int) -> None:
    assert parse_http_date(format_http_date(epoch)) == epoch


@pytest.mark.parametrize(
    ("if_none_match", "etag", "matches"),
    [
        ('"a"', '"a"', True),
        ('W/"a"', '"a"', True),
        ('"a"', 'W/"a"', True),
        ('"b", "a"', '"a"', True),
        ("*", '"a"', True),
        ("*", None, True),
        ('"b"', '"a"', False),
        ('"a"', None, False),
    ],
)
def test_etag_matches(if_none_match: str, etag: str | None, matches: bool) -> None:
    assert etag_matches(if_none_match, etag) is matches


LM = "Tue, 14 Nov 2023 22:13:20 GMT"


@pytest.mark.parametrize(
    ("inm", "ims", "etag", "lm", "expected"),
    [
        (None, LM, None, LM, True),
        (None, "Wed, 15 Nov 2023 00:00:00 GMT", None, LM, True),
        (None, "Mon, 13 Nov 2023 00:00:00 GMT", None, LM, False),
        ('"x"', LM, '"y"', LM, False),  # If-None-Match wins over If-Modified-Since
        (None, "garbage", None, LM, False),
        (None, None, '"y"', LM, False),
    ],
)
def test_not_modified(
    inm: str | None, ims: str | None, etag: str | None, lm: str | None, expected: bool
) -> None:
    assert not_modified(inm, ims, etag, lm) is expected


def test_parse_vary() -> None:
    assert parse_vary(["Accept-Encoding, Origin", "origin"]) == ("accept-encoding", "origin")
    assert parse_vary([" , "]) == ()
    assert parse_vary(["Origin, *"]) is None


# --- request decisions -----------------------------------------------------------------------


def rules_for(method: str, **headers: str) -> tuple[str, str, float | None, float | None]:
    raw = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    r = request_rules(method, "/v1/models", read_request(raw))
    return r.mode, r.reason, r.ttl, r.max_age


@pytest.mark.parametrize(
    ("method", "headers", "expected"),
    [
        ("GET", {}, (LOOKUP, "miss", None, None)),
        ("HEAD", {}, (LOOKUP, "miss", None, None)),
        ("DELETE", {}, (BYPASS, "method", None, None)),
        ("PUT", {"cache_control": "public, max-age=60"}, (BYPASS, "method", None, None)),
        ("GET", {"cache_control": "no-store"}, (BYPASS, "bypass", None, None)),
        ("GET", {"cache_control": "no-cache"}, (REVALIDATE, "request", None, None)),
        ("GET", {"pragma": "no-cache"}, (REVALIDATE, "request", None, None)),
        ("GET", {"pragma": "no-cache", "cache_control": "max-age=5"}, (LOOKUP, "miss", None, 5)),
        ("GET", {"cache_control": "max-age=0"}, (REVALIDATE, "request", None, 0)),
        ("GET", {"cache_control": "max-age=30"}, (LOOKUP, "miss", None, 30)),
        ("GET", {"x_proxy_cache_ttl": "90"}, (LOOKUP, "miss", 90.0, 90.0)),
        ("GET", {"x_proxy_cache_ttl": "junk"}, (LOOKUP, "miss", None, None)),
        ("POST", {}, (BYPASS, "method", None, None)),
        ("POST", {"cache_control": "max-age=60"}, (BYPASS, "method", None, None)),
        ("POST", {"cache_control": "public, max-age=60"}, (LOOKUP, "miss", 60, 60)),
        ("POST", {"cache_control": "public, max-age=0"}, (BYPASS, "method", None, None)),
        ("POST", {"cache_control": "s-maxage=120, max-age=5"}, (LOOKUP, "miss", 120, 5)),
        ("POST", {"x_proxy_cache_ttl": "30", "cache_control": "public"}, (LOOKUP, "miss", 30, 30)),
        ("POST", {"x_proxy_cache_ttl": "0"}, (BYPASS, "method", None, None)),
        ("POST", {"cache_control": "public, max-age=60, no-store"}, (BYPASS, "bypass", None, None)),
        (
            "POST",
            {"cache_control": "public, max-age=60, no-cache"},
            (REVALIDATE, "request", 60, 60),
        ),
    ],
)
def test_request_rules(
    method: str, headers: dict[str, str], expected: tuple[str, str, float | None, float | None]
) -> None:
    assert rules_for(method, **headers) == expected


def test_repeated_cache_control_lines_combine() -> None:
    view = read_request([(b"cache-control", b"public"), (b"cache-control", b"max-age=9")])
    assert request_rules("POST", "/v1/embeddings", view).ttl == 9


# --- response decisions ----------------------------------------------------------------------


def store_for(
    status: int = 200, client_ttl: float | None = None, reuse: str = DEFAULT, **headers: str
) -> tuple[float, str]:
    raw = [(k.replace("_", "-").title().encode(), v.encode()) for k, v in headers.items()]
    r = response_rules(
        status,
        raw,
        now=NOW,
        default_ttl=300,
        client_ttl=client_ttl,
        max_object_bytes=1000,
        reuse=reuse,
    )
    return r.ttl, r.reason


DATE = format_http_date(NOW)


@pytest.mark.parametrize(
    ("status", "client_ttl", "headers", "expected"),
    [
        (200, None, {}, (300, "")),
        (200, None, {"cache_control": "max-age=60"}, (60, "")),
        (200, None, {"cache_control": "max-age=60, s-maxage=600"}, (600, "")),
        (200, None, {"expires": format_http_date(NOW + 120)}, (120, "")),
        (
            200,
            None,
            {"expires": format_http_date(NOW + 120), "cache_control": "max-age=5"},
            (5, ""),
        ),
        (200, None, {"expires": format_http_date(NOW + 120), "date": DATE}, (120, "")),
        (200, None, {"expires": "0"}, (0, "expired")),
        (200, None, {"expires": format_http_date(NOW - 10)}, (0, "expired")),
        (200, None, {"cache_control": "max-age=60", "age": "50"}, (10, "")),
        (200, None, {"cache_control": "max-age=60", "age": "70"}, (0, "expired")),
        (200, None, {"cache_control": "no-store"}, (0, "no-store")),
        (200, None, {"cache_control": "private"}, (0, "private")),
        (200, None, {"cache_control": 'private="set-cookie"'}, (0, "private")),
        (200, None, {"cache_control": "no-cache"}, (0, "no-cache")),
        (200, None, {"cache_control": "public, max-age=0"}, (0, "expired")),
        (200, None, {"vary": "*"}, (0, "vary")),
        (200, None, {"content_length": "1001"}, (0, "too-large")),
        (200, None, {"content_length": "1000"}, (300, "")),
        (200, 30, {}, (30, "")),
        (200, 30, {"cache_control": "max-age=10"}, (10, "")),
        (200, 30, {"cache_control": "max-age=100"}, (30, "")),
        (200, 30, {"cache_control": "no-store"}, (0, "no-store")),
        (200, 30, {"cache_control": "private"}, (0, "private")),
        (200, 30, {"cache_control": "no-cache, must-revalidate"}, (30, "")),
        (201, None, {}, (0, "status")),
        (206, None, {"cache_control": "max-age=60"}, (0, "status")),
        (304, None, {}, (0, "status")),
        (404, None, {}, (0, "status")),
        (404, None, {"cache_control": "max-age=60"}, (60, "")),
        (301, None, {"expires": format_http_date(NOW + 60)}, (60, "")),
        (429, None, {"cache_control": "max-age=60"}, (0, "status")),
        (500, None, {"cache_control": "max-age=60"}, (0, "status")),
        (503, None, {}, (0, "status")),
    ],
)
def test_response_rules(
    status: int, client_ttl: float | None, headers: dict[str, str], expected: tuple[float, str]
) -> None:
    assert store_for(status, client_ttl, **headers) == expected


# docs/caching.md "What is cached" is this table.
@pytest.mark.parametrize(
    ("method", "path", "rule"),
    [
        ("GET", "/v1/models", DEFAULT),
        ("HEAD", "/v1/models", DEFAULT),
        ("GET", "/v1/models/gpt-4o", DEFAULT),
        ("GET", "/v1/models/meta-llama/Llama-3-8B", DEFAULT),
        ("GET", "/v1/modelsx", EXPLICIT),
        ("GET", "/v1/files", EXPLICIT),
        ("GET", "/v1/files/file-abc", EXPLICIT),
        ("GET", "/v1/files/file-abc/content", EXPLICIT),
        ("GET", "/v1/batches/batch_1", EXPLICIT),
        ("GET", "/v1/responses/resp_1", EXPLICIT),
        ("GET", "/v1/fine_tuning/jobs/ftjob-1", EXPLICIT),
        ("GET", "/v1/vector_stores/vs_1/files", EXPLICIT),
        ("GET", "/v1/uploads/upload_1", EXPLICIT),
        ("GET", "/v1/assistants", EXPLICIT),
        ("GET", "/v1/threads/thread_1/messages", EXPLICIT),
        ("GET", "/v1/something-new", EXPLICIT),
        ("POST", "/v1/chat/completions", OPT_IN),
        ("POST", "/v1/models", OPT_IN),
        ("DELETE", "/v1/models/ft-1", NEVER),
        ("PUT", "/v1/files", NEVER),
        ("PATCH", "/v1/models", NEVER),
    ],
)
def test_reuse_rule(method: str, path: str, rule: str) -> None:
    assert reuse_rule(method, path) == rule


@pytest.mark.parametrize(
    ("path", "client_ttl", "headers", "expected"),
    [
        ("/v1/models", None, {}, (300, "")),
        ("/v1/models/gpt-4o", None, {}, (300, "")),
        ("/v1/files", None, {}, (0, "mutable")),
        ("/v1/batches/b", None, {"cache_control": "no-cache"}, (0, "no-cache")),
        ("/v1/batches/b", None, {"cache_control": "must-revalidate"}, (0, "mutable")),
        ("/v1/batches/b", None, {"etag": '"v1"'}, (0, "mutable")),
        ("/v1/files/f", None, {"cache_control": "max-age=60"}, (60, "")),
        ("/v1/files/f", None, {"cache_control": "s-maxage=30"}, (30, "")),
        ("/v1/files/f", None, {"cache_control": "public"}, (300, "")),
        ("/v1/files/f", None, {"cache_control": "public, max-age=0"}, (0, "expired")),
        ("/v1/files/f", None, {"expires": format_http_date(NOW + 45)}, (45, "")),
        ("/v1/files/f", 20, {}, (20, "")),
        ("/v1/files/f", 20, {"cache_control": "max-age=5"}, (5, "")),
        ("/v1/files/f", 20, {"cache_control": "no-store"}, (0, "no-store")),
        ("/v1/files/f", None, {"cache_control": "private, max-age=60"}, (0, "private")),
    ],
)
def test_only_what_is_safe_to_reuse_is_stored_unasked(
    path: str, client_ttl: float | None, headers: dict[str, str], expected: tuple[float, str]
) -> None:
    assert store_for(200, client_ttl, reuse_rule("GET", path), **headers) == expected


def test_response_rules_reads_vary_and_streams() -> None:
    raw = [
        (b"Content-Type", b"text/event-stream; charset=utf-8"),
        (b"Vary", b"Accept-Encoding, Origin"),
        (b"Vary", b"Authorization, X-Tenant"),
    ]
    r = response_rules(
        200, raw, now=NOW, default_ttl=60, client_ttl=None, max_object_bytes=10, reuse=DEFAULT
    )
    assert r.stream and r.ttl == 60
    # Accept-Encoding is already in the key; Authorization is replaced by the project's key.
    assert r.vary == (b"origin", b"x-tenant")


def test_stored_headers_drop_what_belongs_to_one_response() -> None:
    raw = [
        (b"Content-Type", b"application/json"),
        (b"Connection", b"keep-alive, X-Hop"),
        (b"X-Hop", b"1"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Content-Length", b"10"),
        (b"Set-Cookie", b"__cf_bm=abc"),
        (b"X-Request-ID", b"req_1"),
        (b"X-RateLimit-Remaining-Requests", b"99"),
        (b"Date", b"Tue, 14 Nov 2023 22:13:20 GMT"),
        (b"ETag", b'"v1"'),
        (b"OpenAI-Version", b"2020-10-01"),
        (b"X-Bad", b"a\nb"),
    ]
    assert stored_headers(raw) == (
        (b"content-type", b"application/json"),
        (b"etag", b'"v1"'),
        (b"openai-version", b"2020-10-01"),
    )


# --- keys ------------------------------------------------------------------------------------


def key(
    method: str = "GET",
    path: str = "/v1/models",
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes | None = None,
) -> str:
    return cache_key(method, path, query, read_request(headers or []).key_part, body)


def test_cache_key_covers_what_changes_the_answer() -> None:
    base = key()
    assert len(base) == 32 and base == key()
    assert key(method="HEAD") != base
    assert key(path="/v1/models/gpt-4o") != base
    assert key(query=b"a=1&b=2") == key(query=b"b=2&a=1") != base
    assert key(method="POST", body=b"{}") != key(method="POST", body=b"{ }")
    assert key(headers=[(b"accept", b"text/plain")]) != base
    assert key(headers=[(b"openai-organization", b"org-1")]) != base
    assert key(headers=[(b"openai-project", b"proj-1")]) != base
    assert key(headers=[(b"openai-beta", b"assistants=v2")]) != base
    assert key(headers=[(b"accept-encoding", b"gzip")]) != base
    # Headers that do not change the answer do not split the cache.
    assert key(headers=[(b"authorization", b"Bearer sk-llmp-x")]) == base
    assert key(headers=[(b"user-agent", b"OpenAI/Python 1.0")]) == base
    assert key(headers=[(b"x-proxy-cache-ttl", b"60")]) == base


@given(
    st.tuples(st.text(max_size=8), st.binary(max_size=8)),
    st.tuples(st.text(max_size=8), st.binary(max_size=8)),
)
def test_cache_key_fields_cannot_bleed_into_each_other(
    a: tuple[str, bytes], b: tuple[str, bytes]
) -> None:
    if a != b:
        assert key(path="/" + a[0], body=a[1]) != key(path="/" + b[0], body=b[1])


def test_variants() -> None:
    headers = [(b"origin", b"https://a"), (b"authorization", b"Bearer sk"), (b"accept", b"*/*")]
    assert variant_id((b"origin",), headers) != variant_id((b"origin",), [(b"origin", b"b")])
    assert variant_id((b"origin", b"x-t"), headers) == variant_id(
        (b"origin", b"x-t"), [*headers, (b"x-t", b"")]
    )
    assert variant_id((b"origin",), headers) == variant_id((b"origin",), headers[:1])


# --- entry format ----------------------------------------------------------------------------

HEADER_TEXT = st.binary(max_size=30).filter(lambda b: b"\n" not in b)


@given(
    st.integers(min_value=100, max_value=599),
    st.lists(st.tuples(HEADER_TEXT.filter(bool), HEADER_TEXT), max_size=8),
    st.binary(max_size=2000),
    st.floats(min_value=0, max_value=4e9),
    st.booleans(),
)
def test_entries_round_trip(
    status: int, headers: list[tuple[bytes, bytes]], body: bytes, stored: float, stream: bool
) -> None:
    entry = CacheEntry(status, tuple(headers), body, stored, stored + 60, stream)
    assert decode(encode(entry)) == entry


def test_markers_and_garbage() -> None:
    assert decode_marker(encode_marker((b"origin", b"x-t"))) == (b"origin", b"x-t")
    assert decode_marker(encode(CacheEntry(200, (), b"", 0, 1))) is None
    for junk in (b"", b"\x00origin", b"\x01short", b"\x02" + bytes(40)):
        with pytest.raises(ValueError):
            decode(junk)
