"""The console's front end: `/console` (the page) and `/console/static/{name}` (its assets).

The page is a small JavaScript front end that ships in this package (no build step, nothing
fetched from the internet). It keeps the operator's bearer token in the tab's sessionStorage
and calls the JSON APIs with `Authorization: Bearer`, so the server enforces every role and
no cookie is sent on its own (no CSRF surface). The page itself holds no data and needs no
token. Every answer carries a strict Content-Security-Policy: scripts and styles from this
origin only, no inline script, no framing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

__all__ = ["SECURITY_HEADERS", "Asset", "load_assets", "router"]

router = APIRouter(tags=["console"], include_in_schema=False)

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

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
    """Every file of `control_plane/console/static`, read once (they are small)."""
    assets: dict[str, Asset] = {}
    folder = resources.files("control_plane.console") / "static"
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if not entry.is_file() or suffix not in _TYPES:
            continue
        body = entry.read_bytes()
        assets[entry.name] = Asset(body, _TYPES[suffix],
                                   '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return assets


def _serve(request: Request, name: str) -> Response:
    assets: dict[str, Asset] = request.app.state.console_assets
    asset = assets.get(name)
    if asset is None:
        # An HTTP edge concern, not a domain error: the app's handler answers problem+json 404.
        raise HTTPException(404, f"the console has no file named {name!r}")
    headers = {**SECURITY_HEADERS, "ETag": asset.etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@router.get("/console")
@router.get("/console/")
def console_page(request: Request) -> Response:
    return _serve(request, "index.html")


@router.get("/console/static/{name}")
def console_asset(name: str, request: Request) -> Response:
    return _serve(request, name)
