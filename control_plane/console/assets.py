"""The console's static files (page, scripts, styles), read once when the app is built."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

__all__ = ["Asset", "load_assets"]

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """Every file of `control_plane/console/static` (they are small)."""
    assets: dict[str, Asset] = {}
    folder = resources.files("control_plane.console") / "static"
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if not entry.is_file() or suffix not in _TYPES:
            continue
        body = entry.read_bytes()
        assets[entry.name] = Asset(
            body, _TYPES[suffix], '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        )
    return assets
