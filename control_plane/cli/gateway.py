"""`control-plane gateway nginx`: print the complete nginx config for one routing flag.

The config is the shipped template (the one the end-to-end tests run), filled in from the
flag set (the flag's default variant is the fallback upstream) and the settings (header rules,
gateway token). Re-run it after changing the flag's default variant or URL, or after adding
or removing its shadows (which render nginx's `mirror` to the control plane). Anything that
makes the config impossible is one line on stderr and exit status 2; nothing is printed then.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from control_plane.cli.common import settings_from
from control_plane.errors import FlagNotFound, FlagValidationError, NotARoutingFlag
from control_plane.flagstore import FlagStore
from control_plane.gateway.nginx import GatewayConfigError, NginxGateway, stable_route
from control_plane.settings import Settings
from control_plane.shadow.spec import flag_shadows

__all__ = ["add_gateway", "run_gateway_nginx"]

_NAME = "control-plane gateway nginx"


def run_gateway_nginx(
    settings: Settings,
    *,
    flag: str,
    listen: str,
    control_plane: str,
    prefix: Path | None,
    log_port: int | None,
    log_host: str | None,
    decision_timeout_ms: int,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Print the config to `out`; return the exit status (0, or 2 with one line on `err`)."""
    out = out or sys.stdout
    err = err or sys.stderr
    flags_dir = settings.flags_dir
    if not flags_dir.is_dir():
        print(f"{_NAME}: flag directory {flags_dir} does not exist", file=err)
        return 2
    store = FlagStore(flags_dir)
    try:
        flag_set = store.reload()
    except FlagValidationError as exc:
        summary = " ".join(exc.detail.split())
        print(
            f"{_NAME}: the flags in {flags_dir} are invalid ({summary}); run "
            "`control-plane validate`",
            file=err,
        )
        return 2
    tokens = settings.gateway_tokens
    try:
        stable_variant, stable_url = stable_route(flag_set.flags, flag)
        config = NginxGateway(
            prefix=(prefix or Path("nginx")).expanduser().absolute(),
            listen=listen,
            control_plane=control_plane,
            flag=flag,
            stable_variant=stable_variant,
            stable_url=stable_url,
            header_rules=settings.header_rules,
            log_port=settings.gateway_log_port if log_port is None else log_port,
            log_host=log_host or settings.gateway_log_host,
            decision_timeout_ms=decision_timeout_ms,
            gateway_token=tokens[0].get_secret_value() if tokens else None,
            # Shadow traffic: mirror to the control plane when the flag declares shadows.
            shadow=bool(flag_shadows(flag, flag_set.flags[flag])),
        ).render()
    except FlagNotFound as exc:
        routing = sorted(key for key in flag_set.flags if _routes(flag_set.flags, key))
        print(
            f"{_NAME}: {exc.detail} in {flags_dir} (routing flags: {', '.join(routing) or 'none'})",
            file=err,
        )
        return 2
    except (NotARoutingFlag, GatewayConfigError) as exc:
        print(f"{_NAME}: {exc.detail}", file=err)
        return 2
    out.write(config)
    return 0


def _routes(flags: Mapping[str, Any], key: str) -> bool:
    try:
        stable_route(flags, key)
    except (NotARoutingFlag, GatewayConfigError):
        return False
    return True


def _gateway_nginx(args: argparse.Namespace) -> int:
    return run_gateway_nginx(
        settings_from(args),
        flag=args.flag,
        listen=args.listen,
        control_plane=",".join(args.control_plane),
        prefix=args.prefix,
        log_port=args.log_port,
        log_host=args.log_host,
        decision_timeout_ms=args.decision_timeout_ms,
    )


def add_gateway(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    gateway = commands.add_parser(
        "gateway",
        help="print a gateway configuration that routes by a flag",
        description="Print a complete gateway configuration for one routing flag.",
    )
    kinds = gateway.add_subparsers(dest="gateway", required=True)
    nginx = kinds.add_parser(
        "nginx",
        help="nginx config: auth_request decisions, stable fallback, outcome log",
        description="Print a complete nginx config (nginx -p PREFIX -c FILE) that asks the "
        "control plane for each request's backend, sets routing headers only from "
        "trusted sources, falls back to the flag's default variant when no "
        "decision can be had (X-Route-Fallback), and sends one outcome line per "
        "request to the control plane's syslog listener. Re-run after changing "
        "the flag's default variant. The gateway token is the first of "
        "CP_GATEWAY_TOKENS. Exit status 2 (one line on stderr) for an unknown or "
        "non-routing flag or an unusable value.",
    )
    nginx.add_argument("--flag", required=True, help="the routing flag to route by")
    nginx.add_argument(
        "--listen",
        required=True,
        metavar="ADDR",
        help="address nginx listens on, e.g. 0.0.0.0:8000",
    )
    nginx.add_argument(
        "--control-plane",
        dest="control_plane",
        required=True,
        metavar="ADDR",
        action="append",
        help="HOST:PORT of the control plane, e.g. 127.0.0.1:8080; repeat it "
        "for routing replicas (each decision asks one, and the next if "
        "it fails)",
    )
    nginx.add_argument(
        "--prefix",
        type=Path,
        metavar="DIR",
        help="nginx prefix for pid, logs and temp files (default ./nginx)",
    )
    nginx.add_argument(
        "--flags",
        dest="flags_dir",
        type=Path,
        help="flag directory (default: CP_FLAGS_DIR or ./flags)",
    )
    nginx.add_argument(
        "--log-port",
        dest="log_port",
        type=int,
        metavar="N",
        help="UDP port of the control plane's outcome listener "
        "(default CP_GATEWAY_LOG_PORT; 0: no outcome log)",
    )
    nginx.add_argument(
        "--log-host",
        dest="log_host",
        metavar="HOST",
        help="host of the outcome listener (default CP_GATEWAY_LOG_HOST)",
    )
    nginx.add_argument(
        "--decision-timeout-ms",
        dest="decision_timeout_ms",
        type=int,
        default=250,
        metavar="N",
        help="how long a decision may take before the fallback serves (default 250)",
    )
    nginx.set_defaults(command=_gateway_nginx)
