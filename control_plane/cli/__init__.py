"""The `control-plane` command line: every command, one module each (see parser.py).

`main` is imported lazily so that the console script's entry point (`cli.entry`) can say which
extra to install when the server stack is missing, instead of failing while importing this
package.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run `control-plane` with `argv` (default: the process's arguments); the exit status."""
    from control_plane.cli.parser import main as run

    return run(argv)


def build_parser() -> argparse.ArgumentParser:
    """The whole `control-plane` argument parser (imported on first use, as `main` is)."""
    from control_plane.cli.parser import build_parser as build

    return build()
