"""The HTTP server the control plane runs on: uvicorn, with bounded request heads.

uvicorn's httptools protocol has no limit on request headers: httptools accumulates a header in
memory until it ends, so one 256 MB header was accepted and stalled every other request for about
2 s. `BoundedHttpToolsProtocol` counts the bytes of each request head as they arrive and answers
431 (problem+json) and closes the connection as soon as the head passes `max_head_bytes`, one
header value passes `max_header_value_bytes`, or the head has more than `max_header_count` fields.
The defaults match what nginx accepts by default (`large_client_header_buffers 4 8k`).

It also answers in one write where it can: uvicorn writes a response's head and its body in two
`transport.write` calls (two syscalls, ~5 us of a ~24 us request). `_OneWriteCycle` holds the
head of a response with a content length until its body comes and, when that body is the whole
of it, writes both at once. Chunked and multi-part bodies (dispatch streams) stream as before.

Given the app's decide fast path, the protocol also answers lean decisions itself, without an
ASGI cycle (control_plane.http.inline_decide).
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn._types import ASGI3Application, ASGISendEvent
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from control_plane.http.fastpath import DecideFastPath
from control_plane.http.inline_decide import InlineDecide
from control_plane.http.problems import PROBLEM_JSON, problem_body
from control_plane.settings import Settings

__all__ = [
    "BoundedHttpToolsProtocol",
    "HeadLimits",
    "bind_socket",
    "bounded_protocol",
    "head_limits",
    "uvicorn_config",
]

_END_OF_HEAD = b"\r\n\r\n"


@dataclass(frozen=True, slots=True)
class HeadLimits:
    max_head_bytes: int = 32 * 1024
    max_header_value_bytes: int = 8 * 1024
    max_header_count: int = 100


class _HeadRefused(Exception):
    """Raised inside a parser callback to stop parsing a head that breaks a limit."""


class _Capture:
    """Stands in for the transport while uvicorn builds a message: keeps what it writes."""

    __slots__ = ("closed", "data", "real")

    def __init__(self, real: asyncio.Transport) -> None:
        self.real = real
        self.data = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed or self.real.is_closing()


class _OneWriteCycle(RequestResponseCycle):
    """uvicorn's request/response cycle, writing a head and a complete body in one write."""

    _head: bytes | None = None

    async def send(self, message: ASGISendEvent) -> None:
        kind = message["type"]
        if kind == "http.response.start" and not self.response_started:
            capture = await self._captured(message)
            if capture.data and self.chunked_encoding is False and not capture.closed:
                self._head = capture.data  # wait for the body
            else:
                self._flush(capture)
            return
        head = self._head
        if head is None:
            await super().send(message)
            return
        self._head = None
        if kind != "http.response.body" or message.get("more_body", False):
            self.transport.write(head)  # a streamed body: the head goes now, chunks follow
            await super().send(message)
            return
        try:
            capture = await self._captured(message)
        except BaseException:
            self.transport.write(head)  # as uvicorn would have: the head, then the error
            raise
        capture.data = head + capture.data
        self._flush(capture)

    async def _captured(self, message: ASGISendEvent) -> _Capture:
        """Let uvicorn handle `message` (state, checks, completion) with its writes kept."""
        real = self.transport
        capture = _Capture(real)
        self.transport = capture  # type: ignore[assignment]  # write/close/is_closing only
        try:
            await super().send(message)
        finally:
            self.transport = real
        return capture

    def _flush(self, capture: _Capture) -> None:
        if capture.data:
            self.transport.write(capture.data)
        if capture.closed:
            self.transport.close()


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing oversized request heads with 431."""

    limits = HeadLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_open = True  # reading a request head (or waiting for the next one)
        self._head_bytes = 0
        self._head_tail = b""  # the last bytes seen, to find an end of head split over reads
        self._header_count = 0
        self._refusal: str | None = None

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return  # answered 431 already; the connection is closing
        if self._head_open:
            problem = self._count_head(data)
            if problem is not None:
                self._refuse(problem)
                return
        super().data_received(data)  # parser errors (ours included) end in send_400_response

    def _count_head(self, data: bytes) -> str | None:
        window = self._head_tail + data
        end = window.find(_END_OF_HEAD)
        size = (
            self._head_bytes - len(self._head_tail) + end + len(_END_OF_HEAD)
            if end >= 0
            else self._head_bytes + len(data)
        )
        if size > self.limits.max_head_bytes:
            return (
                f"the request head is over {self.limits.max_head_bytes} bytes "
                "(request line and headers)"
            )
        self._head_bytes = size if end < 0 else 0
        self._head_tail = window[-3:] if end < 0 else b""
        return None

    def on_message_begin(self) -> None:
        self._header_count = 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if len(value) > self.limits.max_header_value_bytes:
            self._refusal = (
                f"header {name.decode('latin-1').lower()} is {len(value)} bytes; "
                f"at most {self.limits.max_header_value_bytes} are accepted"
            )
            raise _HeadRefused
        if self._header_count > self.limits.max_header_count:
            self._refusal = f"the request has over {self.limits.max_header_count} headers"
            raise _HeadRefused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._head_bytes = 0
        self._head_tail = b""
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_open = True

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        # Every cycle (pipelined ones included) starts here: make it answer in one write.
        cycle.__class__ = _OneWriteCycle
        super()._start_asgi_task(cycle, app)

    def send_400_response(self, msg: str) -> None:
        if self._refusal is not None:  # a limit of ours stopped the parser: say which
            self._send_431(self._refusal)
        else:
            super().send_400_response(msg)

    def _refuse(self, detail: str) -> None:
        self._refusal = detail
        self._send_431(detail)

    def _send_431(self, detail: str) -> None:
        body = json.dumps(problem_body(431, "Request header fields too large", detail)).encode()
        head = (
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            + b"content-type: "
            + PROBLEM_JSON.encode()
            + b"\r\n"
            + b"content-length: "
            + str(len(body)).encode()
            + b"\r\n"
            + b"connection: close\r\n\r\n"
        )
        self.transport.write(head + body)
        self.transport.close()


def head_limits(settings: Settings) -> HeadLimits:
    return HeadLimits(
        max_head_bytes=settings.max_request_head_bytes,
        max_header_value_bytes=settings.max_header_value_bytes,
        max_header_count=settings.max_request_headers,
    )


def bounded_protocol(
    limits: HeadLimits,
    fast_path: DecideFastPath | None = None,
    decide_ports: frozenset[int] | None = None,
) -> type[BoundedHttpToolsProtocol]:
    """A protocol class with `limits` (uvicorn builds protocols from a class, not a factory);
    with `fast_path`, one that answers lean decisions itself (on `decide_ports` only, if
    given)."""
    if fast_path is None:
        return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"limits": limits})
    return type(
        "InlineDecideProtocol",
        (InlineDecide, BoundedHttpToolsProtocol),
        {"limits": limits, "fast_path": fast_path, "decide_ports": decide_ports},
    )


def uvicorn_config(
    app: Any,
    *,
    host: str,
    port: int,
    limits: HeadLimits | None = None,
    fast_path: DecideFastPath | None = None,
    decide_ports: frozenset[int] | None = None,
    **options: Any,
) -> uvicorn.Config:
    """The uvicorn Config the control plane serves with: bounded heads, uvloop when present,
    and lean decisions answered by the protocol when given the app's `fast_path`."""
    limits = limits or HeadLimits()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=bounded_protocol(limits, fast_path, decide_ports),
        h11_max_incomplete_event_size=limits.max_head_bytes,
        **options,
    )


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to host:port, for `uvicorn.Server.run(sockets=[...])`.

    Bound but not listening: asyncio's create_server calls listen() once the app's startup
    has finished, so a process joins the port only when it can answer. `reuse_port` sets
    SO_REUSEPORT (serve --workers): every process of the control plane binds the port itself
    and the kernel spreads connections over their sockets (more evenly than one shared
    socket); only processes of the same user can join. A socket object, not `--fd`: uvicorn
    wraps a bare fd as AF_UNIX, without TCP_NODELAY (40 ms stalls).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock
