"""Reading JSON request bodies the same way on every endpoint: bounded, with clear 400s."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from control_plane.errors import BadRequestInput

__all__ = ["read_json_body"]


async def read_json_body(request: Request, *, required: bool, limit: int) -> Any:
    """The parsed JSON body, or None when it is empty and not `required`.

    BadRequestInput (400, source "body") when it is missing, over `limit` bytes or not JSON.
    """
    raw = await request.body()
    if not raw.strip():
        if required:
            raise BadRequestInput("the request needs a JSON body", source="body")
        return None
    if len(raw) > limit:
        raise BadRequestInput(f"the body is {len(raw)} bytes; at most {limit}", source="body")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise BadRequestInput(f"the body is not valid JSON: {exc}", source="body") from exc
