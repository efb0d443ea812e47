"""Routing flags: flags whose object variants name a model backend.

A routing variant is `{"backend": "<name>", "url": "http(s)://host[:port][/base]"}`; any other
keys (for example `"weight"` notes or `"timeout"`) are carried along untouched. A flag is a
routing flag when every variant is such an object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = ["Backend", "backend_problem", "routing_table"]


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    url: str


def backend_problem(value: Any) -> str | None:
    """Why `value` is not a routing variant, or None when it is one."""
    if not isinstance(value, Mapping):
        return "a routing variant must be an object with 'backend' and 'url'"
    name = value.get("backend")
    if not isinstance(name, str) or not name.strip():
        return "'backend' must be a non-empty string"
    url = value.get("url")
    if not isinstance(url, str):
        return "'url' must be a string"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"'url' {url!r} is malformed: {exc}"
    if parts.scheme not in ("http", "https"):
        return f"'url' {url!r} must start with http:// or https://"
    if not parts.hostname:
        return f"'url' {url!r} has no host"
    if port == 0:
        return f"'url' {url!r} has port 0"
    if parts.query or parts.fragment:
        return f"'url' {url!r} must not carry a query or fragment"
    return None


def routing_table(flag: Mapping[str, Any]) -> dict[str, Backend] | None:
    """variant -> Backend for a routing flag; None when the flag is not a routing flag."""
    variants = flag.get("variants")
    if not isinstance(variants, Mapping) or not variants:
        return None
    table: dict[str, Backend] = {}
    for variant, value in variants.items():
        if backend_problem(value) is not None:
            return None
        table[variant] = Backend(name=value["backend"], url=value["url"].rstrip("/"))
    return table
