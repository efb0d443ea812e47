"""A client that leaves the dispatch proxy in the middle of its request body: a quiet, counted
event (no traceback, no 500 logged), over a real control plane and a real backend."""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import write_flags
from servers import BackendApp, ServerThread

from control_plane.http.app import create_app
from control_plane.settings import Settings

FLAG = "chat-router"
#: The dispatcher buffers request bodies up to 8 MiB (replayable for a fallback) and streams
#: larger ones to the backend as they arrive: a disconnect can happen in either mode.
BUFFERED = 64 * 1024
STREAMED = 20 * 1024 * 1024  # half of it is over the buffer limit


class _Records(logging.Handler):
    """Every log record of the process at WARNING or above, from any thread."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[_Records]:
    handler = _Records()
    # uvicorn's loggers do not propagate to the root logger: listen on both.
    loggers = [
        logging.getLogger(),
        logging.getLogger("uvicorn"),
        logging.getLogger("uvicorn.error"),
    ]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


@pytest.fixture
def plane(flags_dir: Path, tmp_path: Path) -> Iterator[tuple[str, BackendApp]]:
    backend = BackendApp("chat-v1")
    with ServerThread(backend) as backend_server:
        write_flags(
            flags_dir,
            "chat.flagd.json",
            {
                FLAG: {
                    "state": "ENABLED",
                    "variants": {"stable": {"backend": "chat-v1", "url": backend_server.url}},
                    "defaultVariant": "stable",
                }
            },
        )
        settings = Settings(
            flags_dir=flags_dir,
            database_url=f"sqlite:///{tmp_path / 'cp.db'}",
            sync_port=0,
            reload_interval=0.05,
            dispatch_timeout=5.0,
        )
        with ServerThread(create_app(settings)) as server:
            yield server.url, backend


def _leave_mid_body(url: str, declared: int) -> None:
    """Send the head and half of the declared body on a raw socket, then close it."""
    port = int(url.rsplit(":", 1)[1])
    head = (
        f"POST /v1/dispatch/{FLAG}/v1/chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"x-user-id: leaver\r\ncontent-type: application/octet-stream\r\n"
        f"content-length: {declared}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        sock.sendall(b"x" * (declared // 2))
        time.sleep(0.2)  # let the proxy start reading before the connection goes


def _disconnects(client: httpx.Client) -> float:
    text = client.get("/metrics").text
    found = re.search(
        rf'^control_plane_dispatch_client_disconnects_total{{flag="{FLAG}"}} (\S+)$', text, re.M
    )
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("size", [BUFFERED, STREAMED], ids=["buffered", "streamed"])
def test_a_client_leaving_mid_body_is_counted_and_logs_no_error(
    plane: tuple[str, BackendApp], records: _Records, size: int
) -> None:
    """A client that closes its connection halfway through a buffered or a streamed request
    body is counted once in control_plane_dispatch_client_disconnects_total, leaves no error
    or traceback in the log, and the proxy keeps serving the next request."""
    url, backend = plane
    _leave_mid_body(url, size)
    with httpx.Client(base_url=url, timeout=10) as client:
        deadline = time.monotonic() + 15
        while _disconnects(client) < 1:
            errors = [r for r in records.records if r.levelno >= logging.ERROR]
            assert not errors, [r.getMessage() for r in errors]
            assert time.monotonic() < deadline, "the disconnect was never counted"
            time.sleep(0.05)
        assert _disconnects(client) == 1
        answer = client.post(
            f"/v1/dispatch/{FLAG}/v1/chat", content=b"whole", headers={"x-user-id": "stayer"}
        )
    assert answer.status_code == 200
    assert answer.json()["body"] == "whole"
    if size == BUFFERED:  # a buffered body never reached the backend
        assert [seen["body"] for seen in backend.requests] == ["whole"]
    else:  # a streamed one went out as it came, and was cut off there
        deadline = time.monotonic() + 10
        while len(backend.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        short, cut = sorted(len(seen["body"]) for seen in backend.requests)
        assert short == len("whole")
        assert size // 4 < cut <= size // 2
    shown = [(r.name, r.levelname, r.getMessage()) for r in records.records]
    assert not [r for r in records.records if r.levelno >= logging.ERROR or r.exc_info], shown


def test_a_client_leaving_mid_body_on_a_json_endpoint_is_no_crash(
    caplog: pytest.LogCaptureFixture, flags_dir: Path, tmp_path: Path
) -> None:
    """/v1/route, /v1/events and OFREP read bodies too: a client gone mid-body logs no error."""
    settings = Settings(
        flags_dir=flags_dir, database_url=f"sqlite:///{tmp_path / 'cp.db'}", sync_port=0
    )
    with ServerThread(create_app(settings)) as server:
        for path in (
            "/v1/route/ab-test-router",
            "/v1/events",
            "/ofrep/v1/evaluate/flags/ab-test-router",
        ):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                sock.sendall(
                    f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                    '\r\nContent-Length: 4000\r\n\r\n{"context": {'.encode()
                )
            time.sleep(0.3)
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
