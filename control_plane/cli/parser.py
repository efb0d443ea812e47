"""The `control-plane` command: serve the control plane, and the ops tools around flags.

Each subcommand lives in its own module of this package (a parser builder and a handler taking
the parsed arguments); errors an operator can fix are printed as one clear message with exit
status 1 or 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from control_plane.cli.common import Command
from control_plane.cli.experiments import add_canary, add_experiments
from control_plane.cli.gateway import add_gateway
from control_plane.cli.history import add_history
from control_plane.cli.init import add_init
from control_plane.cli.serve import add_serve
from control_plane.cli.shadow import add_shadow
from control_plane.cli.simulate import add_simulate
from control_plane.cli.tester import add_tester_token
from control_plane.cli.validate import add_validate

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="control-plane", description="Feature-flag control plane for model microservices."
    )
    commands = parser.add_subparsers(dest="subcommand", required=True)
    for add in (
        add_serve,
        add_validate,
        add_history,
        add_simulate,
        add_gateway,
        add_shadow,
        add_experiments,
        add_canary,
        add_tester_token,
        add_init,
    ):
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Command = args.command
    try:
        return command(args)
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "settings"
            print(f"control-plane: invalid setting {where}: {error['msg']}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
