"""`control-plane shadow report|promote`: the parser; handlers in control_plane.shadow.command."""

from __future__ import annotations

import argparse
import os

__all__ = ["add_shadow"]


def add_shadow(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`control-plane shadow report|promote` (handlers: control_plane.shadow.command)."""
    from control_plane.shadow.command import promote_command, report_command

    shadow = commands.add_parser("shadow", help="shadow traffic: report, promote to a canary",
                                 description="Read a flag's shadow traffic report, or promote "
                                             "a shadow backend to a canary, through a running "
                                             "control plane's API.")
    kinds = shadow.add_subparsers(dest="shadow", required=True)
    for name, handler, text in (("report", report_command, "diff rates, status, latency"),
                                ("promote", promote_command,
                                 "the shadow becomes a variant and a canary starts")):
        sub = kinds.add_parser(name, help=text, description=text)
        sub.add_argument("flag", help="the routing flag")
        sub.add_argument("--url", default=os.environ.get("CP_URL", "http://127.0.0.1:8080"),
                         help="control plane base URL (default: CP_URL or "
                              "http://127.0.0.1:8080)")
        sub.add_argument("--token", default=os.environ.get("CP_TOKEN"),
                         help="admin API bearer token (default: CP_TOKEN); viewer for report, "
                              "operator for promote")
        if name == "report":
            sub.add_argument("--json", action="store_true", help="print the report as JSON")
        else:
            sub.add_argument("--backend", required=True, help="the shadow backend to promote")
            sub.add_argument("--variant", help="name of the new variant (default: the backend)")
            sub.add_argument("--canary", metavar="JSON",
                             help="canary spec fields, e.g. '{\"steps\": [5, 25, 100]}'")
        sub.set_defaults(command=handler)
