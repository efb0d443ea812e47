"""Model backends that differ in known ways, for shadow traffic tests (real uvicorn servers).

Every backend answers `POST /v1/predict` with `{"id": n}` in the body as JSON:
`{"id": n, "answer": "a<n>", "score": 0.5, "created": <a fresh nanosecond clock>,
"user": {"email": "user<n>@example.com"}}`, so `created` differs between any two calls (a noisy
field) and everything else is a function of the request. Variations:

- `changed_every`: "answer" is "b<n>" when n % changed_every == 0 (a known diff rate);
- `score_offset`: added to "score" (below the tolerance: not a difference);
- `status`: the status of every answer (503: a failing backend);
- `gate`: a threading.Event every request waits for (a shadow that hangs until released);
- `delay`: seconds slept before answering (a slower backend).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelBackend", "shadow_flag"]


@dataclass
class ModelBackend:
    name: str
    changed_every: int = 0
    score_offset: float = 0.0
    status: int = 200
    delay: float = 0.0
    gate: threading.Event | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.requests.append({"path": scope["path"], "headers": headers, "body": body})
        if self.gate is not None:
            gate = self.gate
            await asyncio.get_running_loop().run_in_executor(None, gate.wait, 30)
        if self.delay:
            await asyncio.sleep(self.delay)
        try:
            number = int(json.loads(body or b"{}").get("id", 0))
        except (ValueError, AttributeError):
            number = 0
        changed = self.changed_every and number % self.changed_every == 0
        payload = json.dumps(
            {
                "id": number,
                "answer": f"{'b' if changed else 'a'}{number}",
                "score": 0.5 + self.score_offset,
                "created": time.time_ns(),
                "user": {"email": f"user{number}@example.com"},
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def shadow_flag(
    primary_url: str, shadows: list[dict[str, Any]], *, compare: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A routing flag whose only variant `stable` declares `shadows`."""
    stable: dict[str, Any] = {"backend": "model-v1", "url": primary_url, "shadows": shadows}
    if compare is not None:
        stable["compare"] = compare
    return {"state": "ENABLED", "variants": {"stable": stable}, "defaultVariant": "stable"}
