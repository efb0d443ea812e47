"""The lean decide path (compiled evaluator, prebuilt answers) answers exactly as the
OpenFeature path does, whether the HTTP protocol answers it inline or the ASGI fast path
does, and the control plane's server writes each response in one write."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from conftest import write_flags
from openfeature.hook import Hook, HookContext, HookHints
from servers import ControlPlaneThread, RecordingTransport
from uvicorn.server import ServerState

from control_plane.http.server import uvicorn_config
from control_plane.routing.compiled_decisions import header_lines
from control_plane.routing.tester_tokens import TesterTokens
from control_plane.routing.wire import decision_headers
from control_plane.settings import Settings
from flags import AB_TEST_ROUTER, CANARY_ROUTER, PINNED_ROUTER, REGION_ROUTER

GOLDEN = json.loads((Path(__file__).parent / "golden" / "assignments.json").read_text())
TESTER_KEY = "tester-token-key-for-lean-decide-tests"
TOKEN = TesterTokens(TESTER_KEY).issue("qa", ttl_seconds=3600)[0]
ROUTING = {
    "a": {"backend": "model-a", "url": "http://127.0.0.1:9201/"},
    "b": {"backend": "model-b", "url": "http://127.0.0.1:9202"},
}
#: Flags beside the shipped ones: disabled, static, erroring on request, null targeting, and
#: one that is not a routing flag.
EXTRA = {
    "disabled-router": {"state": "DISABLED", "variants": ROUTING, "defaultVariant": "b"},
    "static-router": {"state": "ENABLED", "variants": ROUTING, "defaultVariant": "a"},
    "picked-router": {
        "state": "ENABLED",
        "variants": ROUTING,
        "defaultVariant": "a",
        "metadata": {"experiment": True},
        "targeting": {"var": "ab-test-group"},
    },
    "null-router": {
        "state": "ENABLED",
        "variants": ROUTING,
        "defaultVariant": "b",
        "targeting": {"if": [{"==": [{"var": "user-region"}, "eu"]}, "a", None]},
    },
    "greeting": {
        "state": "ENABLED",
        "variants": {"hi": "hi", "bye": "bye"},
        "defaultVariant": "hi",
    },
}
FLAGS = [AB_TEST_ROUTER, REGION_ROUTER, CANARY_ROUTER, PINNED_ROUTER, *EXTRA, "no-such-flag"]
HEADERS: list[dict[str, str | bytes]] = [
    {},
    {"x-user-id": "user-00001"},
    {"x-user-id": "u9", "x-region": "cn"},
    {"x-user-id": "u9", "x-region": "eu", "x-ab-test-id": "b"},
    {"x-user-id": "u3", "x-ab-test-id": "zzz"},  # picked-router: a variant that is not there
    {"x-user-id": "u4", "x-canary-weight": "30"},
    {"x-user-id": "u4", "x-canary-weight": "abc"},  # bad header: 400
    {"x-user-id": "u4", "x-canary-weight": "101"},  # out of range: 400
    {"x-user-id": "u5", "x-canary-version": "v3"},  # a pin without a token: ignored
    {"x-user-id": "u5", "x-canary-version": "v2", "x-tester-token": TOKEN},
    {"x-user-id": "u5", "x-canary-version": "v2", "x-tester-token": "forged"},
    {"x-user-id": "caf\u00e9".encode()},  # UTF-8 bytes on the wire
]


class CountingHook(Hook):
    """An OpenFeature hook that only counts: its presence sends decisions through the SDK."""

    def __init__(self) -> None:
        self.calls = 0

    def before(self, hook_context: HookContext, hints: HookHints) -> None:
        self.calls += 1


def _settings(flags_dir: Path, directory: Path) -> Settings:
    directory.mkdir()
    return Settings(
        flags_dir=flags_dir,
        database_url=f"sqlite:///{directory / 'cp.db'}",
        sync_port=0,
        reload_interval=0.05,
        tester_token_key=TESTER_KEY,
        exposure_spill_dir=directory / "journal",
    )


class Trio(NamedTuple):
    inline: ControlPlaneThread  # lean, answered by the HTTP protocol (what `serve` runs)
    lean: ControlPlaneThread  # lean, answered by the ASGI fast path
    sdk: ControlPlaneThread  # through the OpenFeature SDK (a hook is added)
    hook: CountingHook


@pytest.fixture
def trio(flags_dir: Path, tmp_path: Path) -> Iterator[Trio]:
    """The same flags served three ways."""
    write_flags(flags_dir, "extra.flagd.json", EXTRA)
    hook = CountingHook()
    with (
        ControlPlaneThread(_settings(flags_dir, tmp_path / "inline")) as inline,
        ControlPlaneThread(_settings(flags_dir, tmp_path / "lean"), inline=False) as lean,
        ControlPlaneThread(_settings(flags_dir, tmp_path / "sdk")) as sdk,
    ):
        sdk.components.openfeature_client.add_hooks([hook])
        # The lean servers must not reach the OpenFeature client at all: without one they fail.
        for served in (inline, lean):
            served.components.decider._client = None  # type: ignore[assignment]
        yield Trio(inline, lean, sdk, hook)


def _comparable(response: httpx.Response) -> tuple[int, list[tuple[str, str]], Any]:
    headers = [
        (name, "<id>" if name == "x-route-decision-id" else value)
        for name, value in response.headers.multi_items()
        if name != "date"
    ]
    body = response.json() if response.content else None
    if isinstance(body, dict) and "decisionId" in body:
        assert len(body["decisionId"]) == 24
        body["decisionId"] = "<id>"
    return response.status_code, headers, body


def test_every_path_answers_identically_over_http(trio: Trio) -> None:
    """Every flag x header set (errors included) gets the same status, headers and body."""
    with (
        httpx.Client(base_url=trio.inline.url) as a,
        httpx.Client(base_url=trio.lean.url) as b,
        httpx.Client(base_url=trio.sdk.url) as c,
    ):
        seen = set()
        for flag in FLAGS:
            for headers in HEADERS:
                for method in ("GET", "HEAD"):
                    path = f"/v1/decide/{flag}"
                    inline = _comparable(a.request(method, path, headers=headers))
                    lean = _comparable(b.request(method, path, headers=headers))
                    sdk = _comparable(c.request(method, path, headers=headers))
                    assert inline == lean == sdk, (flag, headers, method)
                    seen.add(inline[0])
                    if inline[0] == 200 and method == "GET":
                        seen.add(inline[2]["reason"])
    assert seen >= {200, 400, 404, 422, "TARGETING_MATCH", "STATIC", "DEFAULT", "DISABLED", "ERROR"}
    assert trio.hook.calls > 0


def test_both_paths_make_the_same_decisions_for_the_golden_users(trio: Trio) -> None:
    """For every golden user the compiled decider's Decision and response (in both forms)
    equal the SDK's."""
    compiled, decider = trio.lean.components.compiled_decider, trio.sdk.components.decider
    for name, users in GOLDEN.items():
        flag, _, weight = name.partition("@weight=")
        attributes = {"canary-weight": int(weight)} if weight else {}
        for user, variant in users.items():
            answer = compiled.decide(flag, user, dict(attributes))
            expected = decider.decide(flag, user, dict(attributes))
            assert answer.decision.variant == variant
            got, want = answer.decision, expected
            got.decision_id = want.decision_id = "<id>"
            assert got == want, (flag, user)
            body = json.loads(answer.body)
            assert body == {**want.as_json(), "decisionId": body["decisionId"]}
            names = [name for name, _ in decision_headers(want)]
            assert [name.decode() for name, _ in answer.headers] == [
                *names,
                "content-type",
                "content-length",
            ]
            assert int(answer.headers[-1][1]) == len(answer.body)
            wire = compiled.decide_wire(flag, user, dict(attributes))
            wire_id = wire.decision.decision_id.encode()
            assert wire.body == answer.body.replace(body["decisionId"].encode(), wire_id)
            assert wire.lines == header_lines(
                [
                    (name, wire_id if name == b"x-route-decision-id" else v)
                    for name, v in answer.headers
                ]
            )


def test_the_lean_path_follows_flag_edits(trio: Trio, flags_dir: Path) -> None:
    """After an edit, the lean path answers with the new version's variant and number."""
    url = f"{trio.inline.url}/v1/decide/disabled-router"
    before = httpx.get(url).json()
    assert (before["reason"], before["variant"]) == ("DISABLED", "b")
    write_flags(
        flags_dir,
        "extra.flagd.json",
        {**EXTRA, "disabled-router": {**EXTRA["disabled-router"], "state": "ENABLED"}},
    )
    deadline = time.monotonic() + 10
    while (after := httpx.get(url).json())["reason"] == "DISABLED":
        assert time.monotonic() < deadline, "the edit never went live"
        time.sleep(0.05)
    assert (after["reason"], after["variant"]) == ("STATIC", "b")
    assert after["flagSetVersion"] > before["flagSetVersion"]


async def _exchange(
    app: Any, request: bytes, *, until: asyncio.Event, transport: RecordingTransport | None = None
) -> RecordingTransport:
    config = uvicorn_config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", access_log=False
    )
    config.load()
    protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = transport or RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(request)
    await asyncio.wait_for(until.wait(), 5)
    await asyncio.sleep(0)
    protocol.connection_lost(None)
    return transport


def test_a_complete_response_is_one_write() -> None:
    """A head with a content length and its whole body leave in a single transport.write."""

    async def run() -> RecordingTransport:
        done = asyncio.Event()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", b"5")],
                }
            )
            await send({"type": "http.response.body", "body": b"hello"})
            done.set()

        return await _exchange(app, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", until=done)

    transport = asyncio.run(run())
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.writes[0].endswith(b"\r\n\r\nhello")


def test_a_streamed_response_still_streams() -> None:
    """A chunked response's head goes out before its first chunk is even produced."""
    heads_before_body: list[int] = []

    async def run() -> RecordingTransport:
        done = asyncio.Event()
        transport = RecordingTransport()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            heads_before_body.append(len(transport.writes))
            await send({"type": "http.response.body", "body": b"a", "more_body": True})
            await send({"type": "http.response.body", "body": b"b"})
            done.set()

        return await _exchange(
            app, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", until=done, transport=transport
        )

    transport = asyncio.run(run())
    assert heads_before_body == [1]
    assert b"".join(transport.writes).endswith(b"1\r\na\r\n1\r\nb\r\n0\r\n\r\n")


def test_a_sized_response_sent_in_parts_streams_its_parts() -> None:
    """With a content length but several body messages, the head leaves with the first part
    and each later part is written as it comes."""

    async def run() -> RecordingTransport:
        done = asyncio.Event()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", b"2")],
                }
            )
            await send({"type": "http.response.body", "body": b"a", "more_body": True})
            await send({"type": "http.response.body", "body": b"b"})
            done.set()

        return await _exchange(app, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", until=done)

    writes = asyncio.run(run()).writes
    assert writes[-2:] == [b"a", b"b"]
    assert writes[0].endswith(b"\r\n\r\n")
