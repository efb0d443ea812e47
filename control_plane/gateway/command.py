"""`control-plane gateway nginx`: print the complete nginx config for one routing flag.

The config is the shipped template (the one the end-to-end tests run), filled in from the
flag set (the flag's default variant is the fallback upstream) and the settings (header rules,
gateway token). Re-run it after changing the flag's default variant or URL, or after adding
or removing its shadows (which render nginx's `mirror` to the control plane). Anything that
makes the config impossible is one line on stderr and exit status 2; nothing is printed then.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from control_plane.errors import FlagNotFound, FlagValidationError, NotARoutingFlag
from control_plane.flagstore import FlagStore
from control_plane.gateway.nginx import GatewayConfigError, NginxGateway, stable_route
from control_plane.settings import Settings
from control_plane.shadow.spec import flag_shadows

__all__ = ["run_gateway_nginx"]

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
