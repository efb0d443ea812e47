"""Lean decisions answered inside the HTTP server, before any ASGI cycle starts.

For a request uvicorn runs an ASGI task: a coroutine per request, the app's call chain, two
`send` messages (dicts) and the protocol's bookkeeping for them. For a decide request that is
as much CPU as the decision itself (bench/decide.py: the raw ASGI app answering a constant
costs ~25 us of server CPU per request, a lean decision ~6 us of it). `InlineDecide` answers
a lean decision in the parser callback that completes the request head: it asks the decide
fast path for the answer as wire bytes (`DecideFastPath.wire_answer`, the same decision, the
same listeners and the same bytes as the ASGI fast path) and writes the response, head and
body, in one write; uvicorn's cycle object is still made and marked complete, so keep-alive,
request bodies (read and dropped, as the fast path ignores them), shutdown and pipelining
behave as for any response.

Everything else goes through ASGI, untouched: other paths, errors (the fast path answers
their problem+json; nothing was decided or counted before the error), OpenFeature hooks on,
uvicorn's access log on, a connection whose writes are paused or that has a response in
flight (pipelined requests answer in order), the concurrency limit's 503, and requests on
sockets other than `decide_ports` (a worker's internal socket).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from control_plane.http.fastpath import DecideFastPath

__all__ = ["InlineDecide"]

log = logging.getLogger(__name__)

_OK = STATUS_LINE[200]
_END = b"\r\n"
_CLOSE = b"connection: close\r\n"
#: What uvicorn answers when an app's header cannot be written (it raises, then sends this).
_SERVER_ERROR = (
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 21\r\n"
    b"connection: close\r\n\r\n"
    b"Internal Server Error"
)


class InlineDecide(HttpToolsProtocol):
    """A mixin in front of the control plane's httptools protocol (see server.py)."""

    #: Set on the class the server builds (control_plane.http.server.bounded_protocol).
    fast_path: ClassVar[DecideFastPath | None] = None
    #: Local ports whose decide requests are answered here; None: every port.
    decide_ports: ClassVar[frozenset[int] | None] = None
    #: uvicorn's default headers (date, server) as head lines, for the list they came from:
    #: the server replaces that list once a second, with a new date.
    _defaults: ClassVar[tuple[Any, bytes]] = (None, b"")

    _in_head = False

    def on_headers_complete(self) -> None:
        self._in_head = True  # a cycle started from here has no response before it in flight
        try:
            super().on_headers_complete()
        finally:
            self._in_head = False

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        if self._in_head and app is self.app and self._answered(cycle):
            return
        super()._start_asgi_task(cycle, app)

    def _answered(self, cycle: RequestResponseCycle) -> bool:
        """Write the lean answer to `cycle`'s request; False to leave it to ASGI."""
        fast_path = self.fast_path
        # The access log as configured (`serve --access-log`): uvicorn logs a response when
        # its logger has handlers, and test runners attach theirs to every logger.
        if fast_path is None or self.config.access_log or self.flow.write_paused:
            return False
        ports = self.decide_ports
        if ports is not None and (self.server is None or self.server[1] not in ports):
            return False
        try:
            answer = fast_path.wire_answer(cycle.scope)  # type: ignore[arg-type]  # uvicorn's TypedDict
        except Exception:
            # A bug, not a refusal (those come back as None): what uvicorn does with an app's
            # exception. Raised out of a parser callback, it would become a 400.
            log.exception("deciding %s failed", cycle.scope["path"])
            return self._server_error(cycle)
        if answer is None:
            return False
        if answer.lines is None:
            # Decided, but a header value holds a control byte: what uvicorn does with it.
            log.error(
                "the answer for flag %r has a header value that cannot be sent",
                answer.decision.flag_key,
            )
            return self._server_error(cycle)
        cycle.response_started = cycle.response_complete = True
        parts = [_OK, self._default_lines(), answer.lines]
        if not cycle.keep_alive:
            parts.append(_CLOSE)
        parts.append(_END)
        if cycle.scope["method"] != "HEAD":
            parts.append(answer.body)
        self.transport.write(b"".join(parts))
        if not cycle.keep_alive:
            self.transport.close()
        cycle.on_response()  # uvicorn's bookkeeping: request count, keep-alive timer
        return True

    def _server_error(self, cycle: RequestResponseCycle) -> bool:
        cycle.response_started = cycle.response_complete = True
        self.transport.write(STATUS_LINE[500] + self._default_lines() + _SERVER_ERROR)
        self.transport.close()
        cycle.on_response()
        return True

    def _default_lines(self) -> bytes:
        defaults = self.server_state.default_headers
        seen, lines = InlineDecide._defaults
        if seen is not defaults:
            lines = b"".join(b"%s: %s\r\n" % pair for pair in defaults)
            InlineDecide._defaults = (defaults, lines)
        return lines
