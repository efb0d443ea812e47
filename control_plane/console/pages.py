"""The console's front end: `/console` (the page) and `/console/static/{name}` (its assets).

The page is a small JavaScript front end that ships in this package (no build step, nothing
fetched from the internet). It keeps the operator's bearer token in the tab's sessionStorage
and calls the JSON APIs with `Authorization: Bearer`, so the server enforces every role and
no cookie is sent on its own (no CSRF surface). The page itself holds no data and needs no
token. Every answer carries a strict Content-Security-Policy: scripts and styles from this
origin only, no inline script, no framing.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

from control_plane.http.components import Components
from control_plane.http.deps import ComponentsDep

__all__ = ["SECURITY_HEADERS", "router"]

router = APIRouter(tags=["console"], include_in_schema=False)

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def _serve(components: Components, request: Request, name: str) -> Response:
    asset = components.console_assets.get(name)
    if asset is None:
        # An HTTP edge concern, not a domain error: the app's handler answers problem+json 404.
        raise HTTPException(404, f"the console has no file named {name!r}")
    headers = {**SECURITY_HEADERS, "ETag": asset.etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@router.get("/console")
@router.get("/console/")
def console_page(request: Request, components: ComponentsDep) -> Response:
    return _serve(components, request, "index.html")


@router.get("/console/static/{name}")
def console_asset(name: str, request: Request, components: ComponentsDep) -> Response:
    return _serve(components, request, name)
