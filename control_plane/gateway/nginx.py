"""Render the shipped nginx configuration for one routing flag (one template, tests included).

Every value put into the config is checked first: nginx reads `;`, `{`, quotes, spaces and `$`
as syntax, so a field holding one is refused with GatewayConfigError naming it, never written.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import quote, urlsplit

from control_plane.errors import ControlPlaneError, FlagNotFound, NotARoutingFlag
from control_plane.gateway.trusted import backend_header_lines, decision_header_lines
from control_plane.routing.backends import routing_table
from control_plane.settings import DEFAULT_HEADER_RULES, HeaderRule

__all__ = [
    "DEFAULT_DECISION_TIMEOUT_MS",
    "NGINX_TEMPLATE",
    "GatewayConfigError",
    "NginxGateway",
    "render_nginx_config",
    "stable_route",
]

NGINX_TEMPLATE = "nginx.conf.template"
DEFAULT_DECISION_TIMEOUT_MS = 250
#: Syslog tag of the outcome lines (the listener accepts any tag).
LOG_TAG = "cp"

_ADDRESS = re.compile(r"^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$|^[0-9]{1,5}$")
_HOST = re.compile(r"^[A-Za-z0-9.-]+$|^\[[0-9a-fA-F:.]+\]$")
_PATH_UNSAFE = re.compile(r"[\s;{}\"'$\\#]")
_TOKEN = re.compile(r"^[A-Za-z0-9._~+/=-]+$")
_VARIANT = re.compile(r"^[A-Za-z0-9._-]{1,256}$")


class GatewayConfigError(ControlPlaneError):
    """A value that cannot go into a gateway configuration as it is."""

    title = "Invalid gateway configuration"


@dataclass(frozen=True)
class NginxGateway:
    """Everything one rendered nginx config depends on."""

    prefix: Path
    listen: str
    #: HOST:PORT of the control plane, or of several routing replicas separated by commas
    #: (each decision goes to one; a failing one is skipped for the next for a second).
    control_plane: str
    flag: str
    #: The flag's default variant and its URL: served when no decision can be had.
    stable_variant: str
    stable_url: str
    header_rules: tuple[HeaderRule, ...] = DEFAULT_HEADER_RULES
    #: UDP port of the control plane's outcome listener; 0: no outcome log.
    log_port: int = 0
    log_host: str = "127.0.0.1"
    decision_timeout_ms: int = DEFAULT_DECISION_TIMEOUT_MS
    #: Sent as `Authorization: Bearer <token>` with every decision (CP_GATEWAY_TOKENS).
    gateway_token: str | None = field(default=None, repr=False)
    #: Mirror decided requests to the control plane's shadow endpoint (the flag has shadows).
    shadow: bool = False

    def check(self) -> None:
        """GatewayConfigError naming the first field nginx could not read as meant."""
        if _PATH_UNSAFE.search(str(self.prefix)) or not self.prefix.is_absolute():
            raise GatewayConfigError(
                f"prefix {str(self.prefix)!r} must be an absolute path "
                "without spaces, quotes, ';', '{', '}', '$' or '#'"
            )
        for name, value in (
            ("listen", self.listen),
            *(("control plane", address) for address in self.decision_servers),
        ):
            if not _ADDRESS.fullmatch(value):
                raise GatewayConfigError(
                    f"{name} address {value!r} must look like HOST:PORT (or PORT)"
                )
        if not _VARIANT.fullmatch(self.stable_variant):
            raise GatewayConfigError(
                f"default variant {self.stable_variant!r} must be letters, "
                "digits, '.', '_' or '-' to be written into nginx headers"
            )
        _check_origin(self.stable_url)
        if not 0 <= self.log_port <= 65535:
            raise GatewayConfigError(f"log port {self.log_port} is not a port number")
        if self.log_port and not _HOST.fullmatch(self.log_host):
            raise GatewayConfigError(f"log host {self.log_host!r} is not a host name or address")
        if not 10 <= self.decision_timeout_ms <= 10_000:
            raise GatewayConfigError(
                f"decision timeout {self.decision_timeout_ms} ms must be from 10 to 10000 ms"
            )
        if self.gateway_token is not None and not _TOKEN.fullmatch(self.gateway_token):
            raise GatewayConfigError(
                "the gateway token holds characters nginx would read as "
                "syntax; use letters, digits and ._~+/=- only"
            )

    @property
    def decision_servers(self) -> list[str]:
        return [address.strip() for address in self.control_plane.split(",") if address.strip()]

    def _upstream_lines(self) -> str:
        servers = self.decision_servers
        if len(servers) == 1:
            # One server: nginx never marks it down, so each decision tries it again.
            return f"        server {servers[0]};"
        # Several replicas: one that fails is left out for a second while the next answers
        # (proxy_next_upstream in /_route), so losing a replica fails no request.
        return "\n".join(
            f"        server {address} max_fails=1 fail_timeout=1s;" for address in servers
        )

    def render(self) -> str:
        self.check()
        template = files(__package__).joinpath(NGINX_TEMPLATE).read_text(encoding="utf-8")
        if self.log_port:
            outcome_log = (
                f"        access_log syslog:server={self.log_host}:{self.log_port},"
                f"tag={LOG_TAG} cp_route;\n"
            )
        else:
            outcome_log = (
                "        # No outcome log: render with --log-port (the control "
                "plane's CP_GATEWAY_LOG_PORT)\n        # so canaries see this "
                "traffic.\n"
            )
        authorization = f'"Bearer {self.gateway_token}"' if self.gateway_token else '""'
        return Template(template).safe_substitute(
            prefix=str(self.prefix),
            listen=self.listen,
            control_plane_servers=self._upstream_lines(),
            flag=quote(self.flag, safe=""),
            stable_variant=self.stable_variant,
            stable_url=self.stable_url.rstrip("/"),
            decision_timeout=f"{self.decision_timeout_ms}ms",
            outcome_log=outcome_log.rstrip("\n"),
            decision_headers=_indent(decision_header_lines(self.header_rules, authorization)),
            backend_headers=_indent(backend_header_lines(self.header_rules)),
            **self._shadow_fields(authorization),
        )

    def _shadow_fields(self, authorization: str) -> dict[str, str]:
        """The mirror lines (control_plane.shadow): empty unless `shadow`."""
        if not self.shadow:
            return {
                "shadow_mirror": "            # No shadows declared: no mirror.",
                "shadow_location": "",
            }
        # The copy goes to the control plane, which answers at once (202/204) and sends it on
        # from its own queue: nginx holds the client connection until mirror subrequests end.
        location = [
            "location = /_shadow {",
            "    internal;",
            f"    proxy_pass http://control_plane/v1/shadow/{quote(self.flag, safe='')}"
            "$request_uri;",
            "    proxy_set_header X-Route-Variant $route_variant;",
            "    proxy_set_header X-Route-Decision-Id $route_decision;",
            f"    proxy_set_header Authorization {authorization};",
            *("    " + line for line in backend_header_lines(self.header_rules)),
            f"    proxy_connect_timeout {self.decision_timeout_ms}ms;",
            f"    proxy_send_timeout {self.decision_timeout_ms}ms;",
            f"    proxy_read_timeout {self.decision_timeout_ms}ms;",
            "    proxy_http_version 1.1;",
            '    proxy_set_header Connection "";',
            "}",
        ]
        return {
            "shadow_mirror": _indent(
                [
                    "# Shadow traffic: a copy of each decided request.",
                    "mirror /_shadow;",
                    "mirror_request_body on;",
                ]
            ),
            "shadow_location": "\n" + _indent(location, 8),
        }


def render_nginx_config(**fields: Any) -> str:
    """The shipped nginx config with its fields filled in (nginx's own $vars are kept).

    Takes NginxGateway's fields as keywords; raises GatewayConfigError for an unsafe value.
    """
    return NginxGateway(**fields).render()


def stable_route(flags: Mapping[str, Any], flag_key: str) -> tuple[str, str]:
    """(default variant, its URL) of a routing flag: where nginx falls back to.

    FlagNotFound / NotARoutingFlag when the flag cannot route; GatewayConfigError when its
    default URL is not an origin URL nginx can fall back to.
    """
    flag = flags.get(flag_key)
    if flag is None:
        raise FlagNotFound(f"no flag named {flag_key!r}")
    table = routing_table(flag)
    if table is None:
        raise NotARoutingFlag(
            f"flag {flag_key!r} is not a routing flag: each variant must be "
            "an object with 'backend' and 'url'"
        )
    default = flag.get("defaultVariant")
    if not isinstance(default, str) or default not in table:
        default = next(iter(table))  # as the decider does: the first variant stands in
    return default, table[default].url


def _check_origin(url: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise GatewayConfigError(f"default variant URL {url!r} is malformed: {exc}") from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username
        or _PATH_UNSAFE.search(url)
    ):
        raise GatewayConfigError(
            f"default variant URL {url!r} must be an origin URL (http[s]://host[:port]) to be "
            "the nginx fallback: proxy_pass would replace the request path with its path"
        )


def _indent(lines: Iterable[str], spaces: int = 12) -> str:
    return "\n".join(" " * spaces + line for line in lines)
