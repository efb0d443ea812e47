"""Reading request bodies the same way on every endpoint: streamed, bounded, checked.

The body is read in chunks and refused (PayloadTooLarge, 413) as soon as it passes the limit, or
before a byte is read when Content-Length already says it would: a 400 MB upload costs the
server no more memory than the limit. JSON bodies are then parsed and every string in them
checked once (`control_plane.json_input`), so no endpoint sees a lone surrogate, a NUL or
nesting deeper than 400 levels.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from control_plane.errors import BadRequestInput, PayloadTooLarge
from control_plane.json_input import loads_checked

__all__ = ["read_body", "read_json_body"]


async def read_body(request: Request, *, limit: int) -> bytes:
    """The raw body, at most `limit` bytes; PayloadTooLarge as soon as it is longer."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"the body is {int(declared)} bytes; at most {limit} are accepted", limit=limit
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                f"the body is over {limit} bytes; at most {limit} are accepted", limit=limit
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json_body(request: Request, *, required: bool, limit: int) -> Any:
    """The parsed, checked JSON body, or None when it is empty and not `required`.

    BadRequestInput (400) when it is missing, not UTF-8 JSON, too deep or holds an unsafe
    string (naming the field); PayloadTooLarge (413) over `limit` bytes.
    """
    raw = await read_body(request, limit=limit)
    if not raw.strip():
        if required:
            raise BadRequestInput("the request needs a JSON body", source="body")
        return None
    return loads_checked(raw, source="body")
