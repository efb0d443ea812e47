"""FastAPI dependency aliases: endpoints get the app's components, never globals."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from control_plane.http.components import Components

__all__ = ["ComponentsDep", "get_components"]


def get_components(request: Request) -> Components:
    components: Components = request.app.state.components
    return components


ComponentsDep = Annotated[Components, Depends(get_components)]
