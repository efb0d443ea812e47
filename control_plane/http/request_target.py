"""Refuse request targets (path and query) that hold control characters, before any routing.

A percent-encoded NUL (`/v1/flags/%00`) decodes into the path every route sees; PostgreSQL
refuses NUL in text, so such a key once reached the database as a 500. The check runs once per
request in front of the whole app (the decide fast path included): a regex over the path, and
over the decoded query only when it holds a percent sign or a raw control byte.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from starlette.types import Scope

from control_plane.errors import BadRequestInput
from control_plane.json_input import unsafe_character

__all__ = ["unsafe_target"]

_RAW_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


def unsafe_target(scope: Scope) -> BadRequestInput | None:
    """The error to answer for an HTTP scope whose path or query is unsafe, else None."""
    problem = unsafe_character(scope["path"], strict=True)
    if problem is not None:
        return BadRequestInput(f"the request path contains {problem}", source="path")
    query: bytes = scope.get("query_string", b"")
    if query and (b"%" in query or _RAW_CONTROL.search(query)):
        text = unquote_to_bytes(query.replace(b"+", b" ")).decode("utf-8", "replace")
        problem = unsafe_character(text, strict=True)
        if problem is not None:
            return BadRequestInput(f"the query string contains {problem}", source="query")
    return None
