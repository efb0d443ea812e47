"""What the dispatch proxy may send to a model backend: which headers, and which path.

Two trust boundaries live here, apart from the HTTP client in `dispatch.py`:

- Headers. A deny-list (`Settings.dispatch_strip_headers`) removes the control plane's and the
  gateway's credentials and every forwarding header a client could forge; the proxy then sets
  `X-Forwarded-For`/`-Host`/`-Proto` itself from the connection. Whatever the list says, an
  `Authorization` that carries one of this service's own tokens (gateway, admin, sync, or any
  generated `cpt_` token) never leaves it.
- Paths. The request path is joined under the backend URL's path prefix only if no reading of
  it climbs out: the path is percent-decoded until it stops changing (so `%2e%2e`, `%252e%252e`
  and `%2f` count as what they decode to) and backslashes count as slashes, then dot segments
  are resolved; one step above the prefix is a BadRequestInput naming the path.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from pydantic import SecretStr

from control_plane.auth import TOKEN_PREFIX
from control_plane.errors import BadRequestInput
from control_plane.settings import Settings

__all__ = ["DEFAULT_STRIP_HEADERS", "ForwardPolicy", "backend_url", "resolve_path"]

#: The default of `Settings.dispatch_strip_headers` (its comment says why these).
DEFAULT_STRIP_HEADERS: tuple[str, ...] = Settings.model_fields["dispatch_strip_headers"].default

#: Percent-decoding rounds before a path that still changes is refused as obfuscated.
_MAX_DECODE_ROUNDS = 4
#: Characters kept literal when re-encoding the (once-decoded) path for the backend request:
#: RFC 3986 pchar plus "/", so that "?", "#" and "%" in a decoded path stay part of the path.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass(frozen=True)
class ForwardPolicy:
    """Which request headers reach a backend; built once from settings."""

    strip: frozenset[str] = frozenset(h for h in DEFAULT_STRIP_HEADERS if not h.endswith("*"))
    strip_prefixes: tuple[str, ...] = tuple(
        h[:-1] for h in DEFAULT_STRIP_HEADERS if h.endswith("*")
    )
    own_token_digests: tuple[bytes, ...] = ()
    _cache: dict[str, bool] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def build(
        cls, strip_headers: Iterable[str], own_tokens: Iterable[SecretStr | str] = ()
    ) -> ForwardPolicy:
        names = [name.strip().lower() for name in strip_headers]
        return cls(
            strip=frozenset(name for name in names if not name.endswith("*")),
            strip_prefixes=tuple(name[:-1] for name in names if name.endswith("*")),
            own_token_digests=tuple(
                _digest(t.get_secret_value() if isinstance(t, SecretStr) else t) for t in own_tokens
            ),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> ForwardPolicy:
        own = [
            *settings.gateway_tokens,
            *settings.sync_tokens,
            *(spec.token for spec in settings.admin_tokens),
        ]
        return cls.build(settings.dispatch_strip_headers, own)

    def strips(self, name: str) -> bool:
        """Whether the lower-case header `name` is on the deny-list."""
        stripped = self._cache.get(name)
        if stripped is None:
            stripped = name in self.strip or name.startswith(self.strip_prefixes)
            if len(self._cache) < 1024:  # header names come from clients: bound the cache
                self._cache[name] = stripped
        return stripped

    def is_own_credential(self, authorization: str) -> bool:
        """Whether an Authorization value carries one of the control plane's own tokens."""
        _, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if not token:
            return False
        if token.startswith(TOKEN_PREFIX):
            return True
        presented = _digest(token)
        found = False
        for digest in self.own_token_digests:  # every digest compared: no early exit
            found |= hmac.compare_digest(presented, digest)
        return found

    def filter(self, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """`headers` minus the deny-listed ones and any Authorization holding our own token."""
        kept: list[tuple[str, str]] = []
        for name, value in headers:
            lower = name.lower()
            if self.strips(lower):
                continue
            if lower == "authorization" and self.is_own_credential(value):
                continue
            kept.append((name, value))
        return kept


def resolve_path(path: str) -> str:
    """`path` (already percent-decoded once by the server) with its dot segments resolved.

    Refuses (BadRequestInput, source "path") a path that would leave the backend's prefix
    under any decoding a backend or another proxy might apply: repeated percent-decoding, and
    backslashes read as slashes. The answer has no leading slash and no dot segments.
    """
    readings = [path]  # the path as received, then each further percent-decoding of it
    for _ in range(_MAX_DECODE_ROUNDS):
        again = unquote(readings[-1])
        if again == readings[-1]:
            break
        readings.append(again)
    else:
        raise BadRequestInput(
            f"dispatch path {path!r} is percent-encoded more than {_MAX_DECODE_ROUNDS} times deep",
            source="path",
        )
    kept = _resolve(path)
    if kept is None or any(_climbs_out(reading.replace("\\", "/")) for reading in readings):
        raise BadRequestInput(
            f"dispatch path {path!r} leaves the backend URL's path prefix ('..' segments, "
            "also percent-encoded, climb above it)",
            source="path",
        )
    if path.endswith(("/", "/.", "/..")) and kept:
        kept.append("")  # keep a trailing slash: /v1/models/ is not /v1/models
    return "/".join(kept)


def _resolve(path: str) -> list[str] | None:
    """The segments of `path` with dot segments applied; None if it climbs above its root."""
    kept: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if not kept:
                return None
            kept.pop()
        elif segment not in (".", ""):
            kept.append(segment)
    return kept


def _climbs_out(path: str) -> bool:
    """The pessimistic reading: would any server that resolves dot segments leave the root?"""
    depth = 0
    for segment in path.split("/"):
        # "..;x" is ".." to servlet containers (path parameters): read it as one here too.
        if segment.partition(";")[0] == "..":
            depth -= 1
            if depth < 0:
                return True
        elif segment.partition(";")[0] not in (".", ""):
            depth += 1
    return False


def backend_url(base: str, resolved_path: str, query: str) -> str:
    """The backend request URL: `base` (no trailing slash) + "/" + encoded path + query.

    `resolved_path` comes from `resolve_path`; it is re-encoded here so that a decoded "?",
    "#" or "%" stays part of the path instead of starting a query or fragment.
    """
    url = base + "/" + quote(resolved_path, safe=_PATH_SAFE)
    if query:
        url += "?" + query
    return url
