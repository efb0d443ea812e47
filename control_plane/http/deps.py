"""Every FastAPI dependency alias: endpoints get the app's components, never globals.

The components live on `app.state.components` (built by `build_components`); the aliases here
hand endpoints the parts they use and check who is calling:

    ComponentsDep    the whole container              ExperimentsDep  experiments and canaries
    SettingsDep      the settings                     TrackerDep      the console's traffic tracker
    MirrorDep        the shadow traffic mirror
    ViewerDep / OperatorDep / AdminDep: the calling Principal, if its admin token's role is at
        least that (401 without a known token, 403 with too low a role)
    GatewayTokenDep: passes when no gateway token is configured or the right one is presented
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from control_plane.auth import Principal, Role
from control_plane.console.traffic import TrafficTracker
from control_plane.experiments.runtime import Experiments
from control_plane.http.components import Components
from control_plane.settings import Settings
from control_plane.shadow.mirror import ShadowMirror

__all__ = [
    "AdminDep",
    "ComponentsDep",
    "ExperimentsDep",
    "GatewayTokenDep",
    "MirrorDep",
    "OperatorDep",
    "SettingsDep",
    "TrackerDep",
    "ViewerDep",
    "get_components",
    "require_gateway_token",
    "require_role",
]


def get_components(request: Request) -> Components:
    components: Components = request.app.state.components
    return components


ComponentsDep = Annotated[Components, Depends(get_components)]


def _settings(components: ComponentsDep) -> Settings:
    return components.settings


def _experiments(components: ComponentsDep) -> Experiments:
    return components.experiments


def _tracker(components: ComponentsDep) -> TrafficTracker:
    return components.traffic


def _mirror(components: ComponentsDep) -> ShadowMirror:
    return components.shadow


SettingsDep = Annotated[Settings, Depends(_settings)]
ExperimentsDep = Annotated[Experiments, Depends(_experiments)]
TrackerDep = Annotated[TrafficTracker, Depends(_tracker)]
MirrorDep = Annotated[ShadowMirror, Depends(_mirror)]


def require_role(role: Role) -> Callable[..., Principal]:
    """A dependency: the request's Principal, if its token's role is at least `role`.

    Sync, so FastAPI runs it on the thread pool: a database-held token is looked up there.
    """

    def dependency(request: Request, components: ComponentsDep) -> Principal:
        principal = components.authenticator.authenticate(request.headers.get("authorization"))
        components.authenticator.authorize(principal, role)
        return principal

    return dependency


ViewerDep = Annotated[Principal, Depends(require_role(Role.VIEWER))]
OperatorDep = Annotated[Principal, Depends(require_role(Role.OPERATOR))]
AdminDep = Annotated[Principal, Depends(require_role(Role.ADMIN))]


def require_gateway_token(request: Request, components: ComponentsDep) -> None:
    """Routing API dependency; the raw-ASGI fast path calls the same checker itself."""
    components.gateway(request.headers.get("authorization"))


GatewayTokenDep = Annotated[None, Depends(require_gateway_token)]
