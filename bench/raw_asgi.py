"""The baseline: the cheapest possible ASGI app, answering a constant decision-sized body."""

from __future__ import annotations

from typing import Any

_BODY = (b'{"flagKey":"ab-test-router","variant":"model-a","backend":"model-a",'
         b'"url":"http://127.0.0.1:9101","reason":"TARGETING_MATCH","flagSetVersion":1,'
         b'"decisionId":"000000000000000000000000"}')
_HEADERS = [(b"content-type", b"application/json"),
            (b"content-length", str(len(_BODY)).encode()),
            (b"x-route-variant", b"model-a"), (b"x-route-upstream", b"http://127.0.0.1:9101")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})
