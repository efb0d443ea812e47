"""The HTTP server the control plane runs on: uvicorn, with bounded request heads.

uvicorn's httptools protocol has no limit on request headers: httptools accumulates a header in
memory until it ends, so one 256 MB header was accepted and stalled every other request for about
2 s. `BoundedHttpToolsProtocol` counts the bytes of each request head as they arrive and answers
431 (problem+json) and closes the connection as soon as the head passes `max_head_bytes`, one
header value passes `max_header_value_bytes`, or the head has more than `max_header_count` fields.
The defaults match what nginx accepts by default (`large_client_header_buffers 4 8k`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from control_plane.http.problems import PROBLEM_JSON, problem_body
from control_plane.settings import Settings

__all__ = [
    "BoundedHttpToolsProtocol",
    "HeadLimits",
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


def bounded_protocol(limits: HeadLimits) -> type[BoundedHttpToolsProtocol]:
    """A protocol class with `limits` (uvicorn builds protocols from a class, not a factory)."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"limits": limits})


def uvicorn_config(
    app: Any, *, host: str, port: int, limits: HeadLimits | None = None, **options: Any
) -> uvicorn.Config:
    """The uvicorn Config the control plane serves with: bounded heads, uvloop when present."""
    limits = limits or HeadLimits()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=bounded_protocol(limits),
        h11_max_incomplete_event_size=limits.max_head_bytes,
        **options,
    )
