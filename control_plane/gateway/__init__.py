"""Gateway integration: the shipped nginx configuration and the outcomes nginx reports back.

- `nginx`: render the config for one routing flag (`control-plane gateway nginx`).
- `trusted`: which routing headers the gateway sets and which the client may send.
- `syslog_listener`: nginx's JSON access log over UDP syslog, turned into backend-call
  outcomes for canaries, experiments and metrics (CP_GATEWAY_LOG_PORT).
"""

from __future__ import annotations

from control_plane.gateway.nginx import (
    NGINX_TEMPLATE,
    GatewayConfigError,
    NginxGateway,
    render_nginx_config,
    stable_route,
)

__all__ = [
    "NGINX_TEMPLATE",
    "GatewayConfigError",
    "NginxGateway",
    "render_nginx_config",
    "stable_route",
]
