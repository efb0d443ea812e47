"""Optimistic concurrency for flag edits: entity tags and `If-Match` / `If-None-Match`.

A read-modify-write edit (read a flag, change it, PUT it back) loses a concurrent edit unless
the write says which version it started from. So every flag has an entity tag, a hash of its
definition, and the flag set has one, a hash of all definitions; a write that carries
`If-Match` goes ahead only when the tag still matches what is in the files at the moment of
writing (checked under the editor's lock), else it is refused with PreconditionFailed (412).

Semantics follow RFC 9110 section 13.1: `If-Match` compares strongly (a weak `W/"..."` tag never
matches), `If-Match: *` needs the flag to exist, `If-None-Match: *` needs it not to (create
only). Both headers are optional: a write without them is a blind write, as before (no 428).

    >>> Precondition.parse(if_match='"abc", "def"').if_match
    ('"abc"', '"def"')
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from control_plane.errors import BadRequestInput, PreconditionFailed

__all__ = ["Precondition", "PreconditionFailed", "flag_etag", "flag_set_etag"]

_TAG = re.compile(r'\s*(\*|(?:W/)?"[\x21\x23-\x7e\x80-\xff]*")\s*(?:,|$)')


def flag_etag(definition: Mapping[str, Any]) -> str:
    """Strong entity tag of one flag definition (member order does not matter)."""
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":"))
    return f'"{hashlib.sha256(canonical.encode()).hexdigest()[:32]}"'


def flag_set_etag(content_hash: str) -> str:
    """Strong entity tag of a whole flag set, from its content hash."""
    return f'"{content_hash[:32]}"'


def _parse_tags(value: str, header: str) -> tuple[str, ...]:
    tags: list[str] = []
    position = 0
    text = value.strip()
    while position < len(text):
        match = _TAG.match(text, position)
        if match is None or match.end() == position:
            raise BadRequestInput(
                f"{header} must be '*' or a comma-separated list of entity tags such as "
                '"abc123" (as sent in the ETag header)',
                source=f"header.{header.lower()}",
            )
        tags.append(match.group(1))
        position = match.end()
    if not tags:
        raise BadRequestInput(f"{header} is empty", source=f"header.{header.lower()}")
    return tuple(tags)


@dataclass(frozen=True)
class Precondition:
    """The conditional headers of one write; None means the header was absent."""

    if_match: tuple[str, ...] | None = None
    if_none_match: tuple[str, ...] | None = None

    @classmethod
    def parse(
        cls, *, if_match: str | None = None, if_none_match: str | None = None
    ) -> Precondition:
        """From raw header values; BadRequestInput (400) naming the header when malformed."""
        return cls(
            if_match=None if if_match is None else _parse_tags(if_match, "If-Match"),
            if_none_match=(
                None if if_none_match is None else _parse_tags(if_none_match, "If-None-Match")
            ),
        )

    @property
    def present(self) -> bool:
        return self.if_match is not None or self.if_none_match is not None

    def check(self, current: str | None, *, what: str) -> None:
        """Raise PreconditionFailed unless the headers hold for `current` (None: no such thing).

        `what` names the resource in the message, e.g. "flag 'ab-test-router'".
        """
        if self.if_match is not None:
            if current is None:
                raise PreconditionFailed(
                    f"If-Match: {what} does not exist (it was deleted or never created); "
                    "read it again",
                    etag=None,
                )
            if "*" not in self.if_match and current not in self.if_match:
                raise PreconditionFailed(
                    f"If-Match: {what} changed since you read it (its ETag is now {current}); "
                    "read it again, reapply your change and retry",
                    etag=current,
                )
        if self.if_none_match is not None and current is not None:
            weak = {tag.removeprefix("W/") for tag in self.if_none_match}
            if "*" in weak or current in weak:
                raise PreconditionFailed(
                    f"If-None-Match: {what} exists already (ETag {current})", etag=current
                )
