"""A worker's proxy to the primary: every request the worker does not answer itself.

The kernel hands a worker connections for the admin API, the console, experiments, metrics
and traffic too; the worker sends those to the primary's internal loopback port as they came
(method, path and query, headers, streamed body) and streams the answer back (status,
headers, body). Hop-by-hop headers are not forwarded. The client's address and scheme go as
X-Forwarded-For / -Proto, replacing what the client sent: uvicorn on the primary trusts them
from loopback (--forwarded-allow-ips), so a client's own X-Forwarded-For must not reach it.
The primary down (a restart, a shutdown): 502 problem+json naming it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import httpx
from starlette.types import Receive, Scope, Send

from control_plane.http.problems import PROBLEM_JSON, problem_body

__all__ = ["PrimaryForwarder"]

log = logging.getLogger(__name__)

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
    }
)
_FORWARDING = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"forwarded"})


class PrimaryForwarder:
    """An ASGI app answering every request from the primary at `base_url`."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url
        self._client = httpx.AsyncClient(
            base_url=base_url,
            transport=transport,
            follow_redirects=False,
            timeout=httpx.Timeout(timeout, connect=2.0),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (name, value)
            for name, value in scope["headers"]
            if name not in _HOP_BY_HOP and name not in _FORWARDING
        ]
        client = scope.get("client")
        if client:
            headers.append((b"x-forwarded-for", str(client[0]).encode("latin-1")))
        headers.append((b"x-forwarded-proto", scope.get("scheme", "http").encode("latin-1")))
        target = scope.get("raw_path") or scope["path"].encode("utf-8")
        query = scope.get("query_string", b"")
        url = target.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        # A body only when the request has one (a GET must not become a chunked request);
        # with a content-length httpx keeps it and streams the body as it arrives.
        has_body = any(
            name in (b"content-length", b"transfer-encoding") for name, _ in scope["headers"]
        )
        request = self._client.build_request(
            scope["method"], url, headers=headers, content=_body(receive) if has_body else None
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            log.warning(
                "worker: cannot forward %s %s to the primary: %s",
                scope["method"],
                scope["path"],
                exc,
            )
            await _bad_gateway(
                send,
                f"the primary control plane at {self.base_url} did not "
                f"answer: {type(exc).__name__}",
            )
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (name.lower(), value)
                        for name, value in response.headers.raw
                        if name.lower() not in _HOP_BY_HOP
                    ],
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            return
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def _bad_gateway(send: Send, detail: str) -> None:
    body = json.dumps(problem_body(502, "Bad gateway", detail)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 502,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
