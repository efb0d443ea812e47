"""Hostile and unusual input against the real `control-plane serve`: nothing crashes or wedges it.

Each test replays a failure found on the previous release (a segfault on a lone surrogate,
non-ASCII identities refused or re-bucketed, unbounded headers and bodies, deep JSON answering
500, made-up keys growing caches and metrics, `%25` decoded twice, fractional weight 12.5 served
as a silent default) and checks the server now answers a clear 4xx and keeps serving.
"""

from __future__ import annotations

import json
import random
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from serve_process import ServeProcess, process_rss_bytes

ADMIN = "admin-token-for-edge-tests-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
SURROGATE_BODY = b'{"context":{"targetingKey":"\\ud800"}}'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    from conftest import copy_shipped_flags

    workdir = tmp_path_factory.mktemp("edge")
    flags = copy_shipped_flags(workdir / "flags")
    with ServeProcess(flags, workdir, env={"CP_ADMIN_TOKENS": f"ops:admin:{ADMIN}"}) as proc:
        yield proc


@pytest.fixture
def http(server: ServeProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client
    assert server.alive(), server.exit_report()


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    return body


def _post_raw(http: httpx.Client, path: str, raw: bytes, **headers: str) -> httpx.Response:
    return http.post(path, content=raw, headers={"content-type": "application/json", **headers})


# -- 1. strings that would crash mmh3 or the database ----------------------------------------


def test_a_lone_surrogate_in_a_route_body_is_a_400_not_a_segfault(
    server: ServeProcess, http: httpx.Client
) -> None:
    """The exact request that killed the process (exit 139) now answers 400 naming the field."""
    body = _problem(_post_raw(http, "/v1/route/ab-test-router", SURROGATE_BODY), 400)
    assert body["source"] == "body.context.targetingKey"
    assert "surrogate" in body["detail"]
    assert server.alive(), server.exit_report()
    assert http.get("/v1/decide/ab-test-router", headers={"x-user-id": "u1"}).status_code == 200


@pytest.mark.parametrize(
    "path", ["/ofrep/v1/evaluate/flags/ab-test-router", "/ofrep/v1/evaluate/flags"]
)
def test_ofrep_refuses_a_lone_surrogate_with_invalid_context(
    server: ServeProcess, http: httpx.Client, path: str
) -> None:
    """OFREP single and bulk evaluation answer 400 INVALID_CONTEXT naming the field."""
    response = _post_raw(http, path, SURROGATE_BODY)
    assert response.status_code == 400, response.text
    assert response.json()["errorCode"] == "INVALID_CONTEXT"
    assert "body.context.targetingKey" in response.json()["errorDetails"]
    assert server.alive(), server.exit_report()


@pytest.mark.parametrize(
    ("text", "kind"),
    [("\\ud800", "surrogate"), ("a\\u0000b", "NUL"), ("a\\u0007b", "control character")],
)
def test_events_refuse_unencodable_strings_with_a_400(
    http: httpx.Client, text: str, kind: str
) -> None:
    """/v1/events answered 500 on a surrogate; every bad string is a 400 naming the field."""
    raw = (
        '{"flag":"ab-test-router","targetingKey":"' + text + '","metric":"converted","value":true}'
    ).encode()
    body = _problem(_post_raw(http, "/v1/events", raw), 400)
    assert body["source"] == "body.targetingKey"
    assert kind in body["detail"]


def test_admin_put_and_canary_specs_refuse_a_nul(http: httpx.Client) -> None:
    """A NUL in a flag definition or a canary spec never reaches the store or the database."""
    flag = {
        "state": "ENABLED",
        "defaultVariant": "a\u0000",
        "variants": {"a\u0000": {"backend": "a", "url": "http://127.0.0.1:9"}},
    }
    put = http.put(
        "/v1/flags/nul-flag",
        content=json.dumps(flag).encode(),
        headers={**AUTH, "content-type": "application/json"},
    )
    assert _problem(put, 400)["source"].startswith("body.")
    canary = http.post(
        "/v1/canaries/canary-router", headers=AUTH, content=b'{"variant":"canary\\u0000"}'
    )
    assert _problem(canary, 400)["source"] == "body.variant"
    assert http.get("/v1/flags/nul-flag", headers=AUTH).status_code == 404


def test_a_nul_in_the_path_or_query_is_refused_before_any_route(http: httpx.Client) -> None:
    """%00 in the path (a flag key) or in a query value is a 400, on every route."""
    for path in ("/v1/flags/a%00b", "/v1/decide/a%00b", "/v1/experiments/x%00"):
        assert _problem(http.get(path, headers=AUTH), 400)["source"] == "path"
    assert _problem(http.get("/v1/canaries?flag=%00", headers=AUTH), 400)["source"] == "query"


# -- 2. non-ASCII identities -----------------------------------------------------------------


def _non_ascii_ids(count: int) -> list[str]:
    rng = random.Random(20261201)
    alphabets = ["éèüöñçåøß", "日本語中文字漢字", "한국어사용자", "кириллица", "ελληνικά", "عربي"]
    ids = []
    for index in range(count):
        letters = rng.choice(alphabets)
        ids.append("".join(rng.choice(letters) for _ in range(rng.randint(2, 8))) + str(index))
    ids[:2] = ["josé", "李小龙"]
    return ids


def test_non_ascii_ids_get_the_same_variant_through_header_body_and_ofrep(
    http: httpx.Client,
) -> None:
    """1,000 UTF-8 ids: the header path accepts all, and header, body and OFREP agree."""
    disagreements = []
    for user in _non_ascii_ids(1000):
        by_header = http.get("/v1/decide/ab-test-router", headers={"x-user-id": user.encode()})
        assert by_header.status_code == 200, (user, by_header.text)
        by_body = http.post("/v1/route/ab-test-router", json={"context": {"targetingKey": user}})
        by_ofrep = http.post(
            "/ofrep/v1/evaluate/flags/ab-test-router", json={"context": {"targetingKey": user}}
        )
        variants = (
            by_header.json()["variant"],
            by_body.json()["variant"],
            by_ofrep.json()["variant"],
        )
        if len(set(variants)) != 1:
            disagreements.append((user, variants))
    assert disagreements == []


def test_a_header_that_is_not_utf8_is_a_400_naming_it(http: httpx.Client) -> None:
    """Bytes that are not UTF-8 in a mapped header are refused, not decoded as Latin-1."""
    body = _problem(http.get("/v1/decide/ab-test-router", headers={"x-user-id": b"jos\xe9"}), 400)
    assert body["source"] == "x-user-id"
    assert "UTF-8" in body["detail"]


# -- 3. bounded work per request --------------------------------------------------------------


def _raw_request(port: int, head: bytes, body: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_an_oversized_header_is_refused_with_431_while_others_are_served(
    server: ServeProcess, http: httpx.Client
) -> None:
    """A 64 MB header is cut off at the head limit (431, connection closed), not buffered."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /v1/decide/ab-test-router HTTP/1.1\r\nHost: x\r\nx-junk: ")
        sent = 0
        try:
            while sent < 64 * 1024 * 1024:
                sock.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"application/problem+json" in answer
    assert sent < 64 * 1024 * 1024, "the server kept reading an unbounded header"
    assert http.get("/v1/decide/ab-test-router", headers={"x-user-id": "u"}).status_code == 200


def test_one_long_header_value_or_too_many_headers_is_431(server: ServeProcess) -> None:
    """Per-value (8 KiB) and count (100) limits answer 431 naming what was over."""
    long_value = _raw_request(
        server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nx-a: " + b"v" * 9000 + b"\r\n\r\n"
    )
    assert long_value.startswith(b"HTTP/1.1 431 ")
    assert b"x-a" in long_value
    many = b"".join(b"x-h%d: v\r\n" % index for index in range(150))
    too_many = _raw_request(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert too_many.startswith(b"HTTP/1.1 431 ")


def test_a_huge_body_is_refused_at_the_limit_without_being_buffered(
    server: ServeProcess, http: httpx.Client
) -> None:
    """A 200 MB body (no Content-Length) is a 413 at the limit; the server's RSS stays flat."""
    rss_before = process_rss_bytes(server.pid)

    def chunks() -> Iterator[bytes]:
        yield b'{"context":{"x":"'
        for _ in range(200):
            yield b"a" * (1024 * 1024)
        yield b'"}}'

    try:
        response = http.post(
            "/v1/route/ab-test-router",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
        assert _problem(response, 413)["limit"] == 64 * 1024
    except httpx.TransportError:
        pass  # the server may answer and close before the client has sent everything
    declared = http.post(
        "/v1/events", content=b"x" * (5 * 1024 * 1024), headers={"content-type": "application/json"}
    )
    _problem(declared, 413)
    grown = process_rss_bytes(server.pid) - rss_before
    assert grown < 50 * 1024 * 1024, f"RSS grew by {grown} bytes"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/route/ab-test-router",
        "/v1/events",
        "/v1/canaries/canary-router",
        "/ofrep/v1/evaluate/flags/ab-test-router",
    ],
)
def test_deeply_nested_json_is_a_400_on_every_json_endpoint(
    server: ServeProcess, http: httpx.Client, path: str
) -> None:
    """30,000 nested arrays (and 401 levels) answer 400, not 500."""
    for depth in (30_000, 401):
        raw = b'{"context":' + b"[" * depth + b"]" * depth + b"}"
        response = _post_raw(http, path, raw, **AUTH)
        assert response.status_code == 400, (depth, response.text[:300])
        assert "nested deeper than 400" in response.text
    assert server.alive(), server.exit_report()


def test_deep_flag_definitions_are_refused_not_crashing_the_validator(
    http: httpx.Client,
) -> None:
    """An admin PUT with a rule nested 399 deep (under the body limit) is never a 500."""
    rule: Any = "a"
    for _ in range(190):
        rule = {"if": [True, rule, "a"]}
    flag = {
        "state": "ENABLED",
        "defaultVariant": "a",
        "targeting": rule,
        "variants": {"a": {"backend": "a", "url": "http://127.0.0.1:9"}},
    }
    response = http.put("/v1/flags/deep-flag", json=flag, headers=AUTH)
    assert response.status_code < 500, response.text[:300]


def test_made_up_flag_keys_and_context_keys_do_not_grow_memory_or_metrics(
    server: ServeProcess, http: httpx.Client
) -> None:
    """20,000 unknown long flag keys and distinct bad context keys leave /metrics bounded."""
    metrics_before = len(http.get("/metrics").content)
    for index in range(2000):
        key = f"no-such-flag-{index}-" + "k" * 1000
        assert http.get(f"/v1/decide/{key}").status_code == 404
        bad = http.post(
            "/v1/route/ab-test-router",
            json={"context": {f"attr-{index}": {"a": {"b": {"c": {"d": 1}}}}}},
        )
        assert bad.status_code == 400
    metrics_after = len(http.get("/metrics").content)
    assert metrics_after - metrics_before < 4096, "a metric series per request-chosen value"


# -- 8 (part) and 9 -----------------------------------------------------------------------


def test_the_fast_path_decodes_the_flag_key_once_like_the_router(http: httpx.Client) -> None:
    """`%2525` is the key `%25` on the fast path, as on the router (it was `%` before)."""
    fast = _problem(http.get("/v1/decide/x%2525y"), 404)
    routed = _problem(http.post("/v1/route/x%2525y"), 404)
    assert fast["detail"] == routed["detail"] == "no flag named 'x%25y'"


def test_a_fractional_canary_weight_is_a_400_not_a_silent_default(http: httpx.Client) -> None:
    """`x-canary-weight: 12.5` served `stable` with reason DEFAULT to 400 of 400 users."""
    body = _problem(
        http.get(
            "/v1/decide/canary-router", headers={"x-user-id": "u1", "x-canary-weight": "12.5"}
        ),
        400,
    )
    assert body["source"] == "x-canary-weight"
    assert "whole number" in body["detail"]
    in_body = http.post(
        "/v1/route/canary-router", json={"context": {"targetingKey": "u1", "canary-weight": 12.5}}
    )
    assert _problem(in_body, 400)["source"] == "body.context.canary-weight"
    reasons = {
        http.get(
            "/v1/decide/canary-router", headers={"x-user-id": f"u{i}", "x-canary-weight": "30.0"}
        ).json()["reason"]
        for i in range(50)
    }
    assert reasons == {"TARGETING_MATCH"}
