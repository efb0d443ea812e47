"""`control-plane tester-token SUBJECT`: issue a tester token offline, with the configured key.

Signing needs only CP_TESTER_TOKEN_KEY (the same key the control plane verifies with), so a
release engineer can issue tokens without reaching the admin API; the admin API's
POST /v1/tester-tokens does the same and writes the audit log.
"""

from __future__ import annotations

import argparse
import re
import sys

from control_plane.routing.context import TESTER_TOKEN_HEADER
from control_plane.routing.tester_tokens import MAX_TTL_SECONDS, TesterTokens
from control_plane.settings import Settings

__all__ = ["add_tester_token", "parse_ttl"]

_TTL = re.compile(r"^(\d+)([smhd]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    """Seconds from `90`, `90s`, `30m`, `8h` or `7d` (at most seven days)."""
    match = _TTL.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30m, 8h or 7d")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not 0 < seconds <= MAX_TTL_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r}: a tester token lives 1 s to 7 days")
    return seconds


def _tester_token(args: argparse.Namespace) -> int:
    key = Settings().tester_token_key
    if key is None:
        print(
            "control-plane tester-token: CP_TESTER_TOKEN_KEY is not set (the key the "
            "control plane verifies tester tokens with, 32+ characters)",
            file=sys.stderr,
        )
        return 2
    try:
        token, expires_at = TesterTokens(key.get_secret_value()).issue(
            args.subject, ttl_seconds=args.ttl, flags=args.flags
        )
    except ValueError as exc:
        print(f"control-plane tester-token: {exc}", file=sys.stderr)
        return 2
    print(token)
    print(
        f"# {TESTER_TOKEN_HEADER}: for {args.subject}, expires at unix time {expires_at}"
        + (f", flags {', '.join(sorted(set(args.flags)))}" if args.flags else ""),
        file=sys.stderr,
    )
    return 0


def add_tester_token(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    command = commands.add_parser(
        "tester-token",
        help="issue a tester token (lets a tester pin a version)",
        description="Print a signed tester token for SUBJECT. Send it as the x-tester-token "
        "header: pins such as x-canary-version are honoured only with one. Needs "
        "CP_TESTER_TOKEN_KEY, the key the control plane verifies with.",
    )
    command.add_argument("subject", help="who the token is for (name or e-mail)")
    command.add_argument(
        "--ttl",
        type=parse_ttl,
        default=3600,
        help="validity: seconds, or 30m, 8h, 7d (default 1h, at most 7d)",
    )
    command.add_argument(
        "--flag",
        dest="flags",
        action="append",
        default=[],
        help="limit the token to this flag (repeatable; default: any flag)",
    )
    command.set_defaults(command=_tester_token)
