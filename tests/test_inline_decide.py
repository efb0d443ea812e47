"""Lean decisions answered by the HTTP protocol itself (control_plane.http.inline_decide).

The server under test is the control plane's own uvicorn configuration, as `serve` runs it,
on loopback; raw sockets and h11 read what it writes. An ASGI wrapper counts what reaches
ASGI: an inline answer never does, everything the protocol leaves to ASGI does.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h11
import pytest
from openfeature.hook import Hook
from servers import ControlPlaneThread, RecordingTransport
from uvicorn.server import ServerState

from control_plane.http.app import ControlPlaneApp
from control_plane.http.server import uvicorn_config
from control_plane.routing.compiled_decisions import WireAnswer, header_lines
from control_plane.routing.decisions import Decision
from control_plane.settings import Settings

DECIDE = b"GET /v1/decide/region-router HTTP/1.1\r\nhost: x\r\nx-region: cn\r\n\r\n"


class CountingASGI:
    """Passes everything to the control plane's app, counting requests by path."""

    def __init__(self, app: ControlPlaneApp) -> None:
        self.app = app
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.app(scope, receive, send)


def _settings(flags_dir: Path, tmp_path: Path) -> Settings:
    return Settings(
        flags_dir=flags_dir,
        database_url=f"sqlite:///{tmp_path / 'cp.db'}",
        sync_port=0,
        exposure_spill_dir=tmp_path / "journal",
    )


def _serve(flags_dir: Path, tmp_path: Path, **options: Any) -> tuple[ControlPlaneThread, Any]:
    seen: list[CountingASGI] = []

    def wrap(app: ControlPlaneApp) -> CountingASGI:
        seen.append(CountingASGI(app))
        return seen[0]

    served = ControlPlaneThread(_settings(flags_dir, tmp_path), wrap=wrap, **options)
    return served, seen[0]


@pytest.fixture
def served(flags_dir: Path, tmp_path: Path) -> Iterator[tuple[ControlPlaneThread, CountingASGI]]:
    server, counter = _serve(flags_dir, tmp_path)
    with server:
        yield server, counter


def _request(method: str, target: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "host: x", *headers]
    if body:
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _prime(client: h11.Connection) -> None:
    client.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    client.send(h11.EndOfMessage())


def _read(port: int, data: bytes, responses: int) -> list[tuple[int, dict[str, str], bytes]]:
    """Send `data` at once; the next `responses` answers as (status, headers, body)."""
    client = h11.Connection(h11.CLIENT)
    _prime(client)
    answers: list[tuple[int, dict[str, str], bytes]] = []
    status, headers, body = 0, {}, b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        while len(answers) < responses:
            event = client.next_event()
            if event is h11.NEED_DATA:
                chunk = sock.recv(65536)
                client.receive_data(chunk)
                if not chunk and client.their_state is not h11.DONE:
                    raise AssertionError(f"connection closed after {len(answers)} answers")
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = {name.decode(): value.decode() for name, value in event.headers}
                body = b""
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                answers.append((status, headers, body))
                if client.their_state is h11.MUST_CLOSE:
                    break
                client.start_next_cycle()
                _prime(client)
    return answers


def test_a_decision_never_reaches_asgi(served: tuple[ControlPlaneThread, CountingASGI]) -> None:
    server, counter = served
    [(status, headers, body)] = _read(server.port, DECIDE, 1)
    assert status == 200
    assert headers["x-route-variant"] == "cn"
    assert headers["content-length"] == str(len(body))
    assert {"date", "server"} <= set(headers)  # uvicorn's default headers, as ASGI answers get
    assert counter.paths == []


def test_errors_and_other_paths_go_through_asgi(
    served: tuple[ControlPlaneThread, CountingASGI],
) -> None:
    server, counter = served
    requests = [
        _request("GET", "/v1/decide/no-such-flag"),
        _request("GET", "/v1/decide/canary-router", "x-canary-weight: abc"),
        _request("GET", "/v1/decide/region-router%00"),
        _request("GET", "/v1/decide/"),
        _request("GET", "/healthz"),
    ]
    statuses = [answer[0] for answer in _read(server.port, b"".join(requests), len(requests))]
    assert statuses == [404, 400, 400, 404, 200]
    assert counter.paths == [
        "/v1/decide/no-such-flag",
        "/v1/decide/canary-router",
        "/v1/decide/region-router\x00",
        "/v1/decide/",
        "/healthz",
    ]


def test_pipelined_decisions_are_answered_inline_in_order(
    served: tuple[ControlPlaneThread, CountingASGI],
) -> None:
    server, counter = served
    users = [f"u{n}" for n in range(50)]
    requests = [_request("GET", "/v1/decide/ab-test-router", f"x-user-id: {u}") for u in users]
    answers = _read(server.port, b"".join(requests), len(requests))
    assert [status for status, _, _ in answers] == [200] * len(users)
    ids = [headers["x-route-decision-id"] for _, headers, _ in answers]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert counter.paths == []


def test_requests_pipelined_behind_an_asgi_response_wait_for_it(
    served: tuple[ControlPlaneThread, CountingASGI],
) -> None:
    """A decision queued behind a response in flight is not answered before it: the queue
    goes through ASGI, in order."""
    server, counter = served
    paths = ["/healthz", "/v1/decide/region-router", "/v1/decide/no-such-flag", "/readyz"]
    paths += ["/v1/decide/region-router"] * 5
    requests = [_request("GET", path, "x-region: cn") for path in paths]
    answers = _read(server.port, b"".join(requests), len(requests))
    assert [status for status, _, _ in answers] == [200, 200, 404, 200, *[200] * 5]
    assert [headers.get("x-route-variant") for _, headers, _ in answers] == [
        None,
        "cn",
        None,
        None,
        *["cn"] * 5,
    ]
    assert counter.paths == paths


def test_http_1_0_closes_and_head_has_no_body(
    served: tuple[ControlPlaneThread, CountingASGI],
) -> None:
    server, counter = served
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /v1/decide/region-router HTTP/1.0\r\nx-region: cn\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):  # the server closes the connection
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nconnection: close" in head
    assert b'"variant":"cn"' in body
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(_request("HEAD", "/v1/decide/region-router") + DECIDE)
        data = b""
        while data.count(b"HTTP/1.1 200 OK") < 2 or not data.endswith(b"}"):
            data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert b"\r\ncontent-length: 187" in head  # the global variant's body, not sent
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n")  # no body after the HEAD answer's head
    assert counter.paths == []


def test_a_request_body_is_read_and_dropped(
    served: tuple[ControlPlaneThread, CountingASGI],
) -> None:
    """Envoy's ext_authz keeps the client's method and path: the body is not the decision's,
    and the next request on the connection is read after it."""
    server, counter = served
    requests = [
        _request("POST", "/v1/decide/region-router/v1/chat", "x-region: cn", body=b"x" * 70_000),
        DECIDE,
    ]
    answers = _read(server.port, b"".join(requests), 2)
    assert [(status, headers["x-route-variant"]) for status, headers, _ in answers] == [
        (200, "cn"),
        (200, "cn"),
    ]
    assert counter.paths == []


def test_hooks_and_the_access_log_send_decisions_through_asgi(
    flags_dir: Path, tmp_path: Path
) -> None:
    server, counter = _serve(flags_dir, tmp_path / "hooked")
    with server:
        server.components.openfeature_client.add_hooks([Hook()])
        assert _read(server.port, DECIDE, 1)[0][0] == 200
    assert counter.paths == ["/v1/decide/region-router"]
    server, counter = _serve(flags_dir, tmp_path / "logged", access_log=True)
    with server:
        assert _read(server.port, DECIDE, 1)[0][0] == 200
    assert counter.paths == ["/v1/decide/region-router"]


def test_only_the_named_ports_answer_inline(flags_dir: Path, tmp_path: Path) -> None:
    """A worker's internal socket is not a decide port: its requests stay with its ASGI front."""
    server, counter = _serve(flags_dir, tmp_path, decide_ports=frozenset({1}))
    with server:
        assert _read(server.port, DECIDE, 1)[0][0] == 200
    assert counter.paths == ["/v1/decide/region-router"]


class _FixedAnswer:
    """A fast path whose answer is given: what the protocol does with odd answers."""

    def __init__(self, answer: WireAnswer | Exception) -> None:
        self.answer = answer

    def wire_answer(self, scope: Any) -> WireAnswer:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def _protocol_answer(answer: WireAnswer | Exception, request: bytes) -> RecordingTransport:
    """Feed `request` to the protocol class `serve` uses, its fast path answering `answer`;
    what it wrote before the event loop ran once."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the protocol should have answered")

    async def run() -> RecordingTransport:
        config = uvicorn_config(
            app,
            host="127.0.0.1",
            port=0,
            fast_path=_FixedAnswer(answer),  # type: ignore[arg-type]
            log_level="warning",
            lifespan="off",
            access_log=False,
        )
        config.load()
        protocol = config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=ServerState(), app_state={}
        )
        transport = RecordingTransport()
        protocol.connection_made(transport)
        protocol.data_received(request)
        answered = RecordingTransport()  # what was written synchronously, in the parser callback
        answered.writes, answered.closed = transport.writes[:], transport.closed
        protocol.connection_lost(None)
        return answered

    return asyncio.run(run())


def _decision() -> Decision:
    return Decision("f", "a", "model-a", "http://a", "STATIC", 1, "0" * 24, None, None, {}, "a")


def test_the_answer_is_written_in_one_write_inside_the_parser_callback() -> None:
    answer = WireAnswer(_decision(), b"{}", header_lines([(b"content-length", b"2")]))
    transport = _protocol_answer(answer, _request("GET", "/v1/decide/f"))
    assert transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    assert not transport.closed


def test_a_header_that_cannot_be_written_answers_500_as_uvicorn_would(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert header_lines([(b"x-route-upstream", b"http://a\r\nset-cookie: x")]) is None
    answer = WireAnswer(_decision(), b"{}", None)
    transport = _protocol_answer(answer, _request("GET", "/v1/decide/f"))
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert transport.writes[0].endswith(b"\r\n\r\nInternal Server Error")
    assert transport.closed
    assert "cannot be sent" in caplog.text


def test_a_failing_decision_answers_500_not_400(caplog: pytest.LogCaptureFixture) -> None:
    """An exception out of the parser callback would read as a malformed request (400)."""
    transport = _protocol_answer(RuntimeError("a bug"), _request("GET", "/v1/decide/f"))
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert transport.closed
    assert "deciding /v1/decide/f failed" in caplog.text
