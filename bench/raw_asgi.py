"""The baseline: the cheapest possible ASGI app, answering a constant decision.

Its response has the same shape as a real `/v1/decide` answer (the same headers and a body of
the same size), so the comparison measures the work of deciding, not the cost of a bigger
response in the HTTP server.
"""

from __future__ import annotations

from typing import Any

_BODY = (
    b'{"flagKey":"ab-test-router","variant":"model-a","backend":"model-a",'
    b'"url":"http://127.0.0.1:9101","reason":"TARGETING_MATCH","flagSetVersion":1,'
    b'"decisionId":"000000000000000000000000"}'
)
_HEADERS = [
    (b"x-route-variant", b"model-a"),
    (b"x-route-backend", b"model-a"),
    (b"x-route-upstream", b"http://127.0.0.1:9101"),
    (b"x-route-decision-id", b"000000000000000000000000"),
    (b"x-route-reason", b"TARGETING_MATCH"),
    (b"x-route-flag-set-version", b"1"),
    (b"cache-control", b"no-store"),
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_BODY)).encode()),
]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})
