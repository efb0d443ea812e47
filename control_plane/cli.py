"""The `control-plane` command: serve the control plane, and the ops tools around flags.

Each subcommand is a small function taking parsed arguments; errors an operator can fix are
printed as one clear message with exit status 1 or 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import ValidationError

__all__ = ["main"]

Command = Callable[[argparse.Namespace], int]


def _settings_from(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """Settings from explicit options over environment over defaults."""
    from control_plane.settings import Settings

    explicit = {
        name: getattr(args, name)
        for name in ("flags_dir", "host", "port", "database_url", "sync_port")
        if getattr(args, name, None) is not None
    }
    return Settings(**explicit)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from control_plane.http.app import create_app

    settings = _settings_from(args)
    if not settings.flags_dir.is_dir():
        print(f"control-plane serve: flag directory {settings.flags_dir} does not exist",
              file=sys.stderr)
        return 2
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level,
                access_log=args.access_log)
    return 0


def _add_serve(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = commands.add_parser(
        "serve", help="run the control plane (routing API, admin API, flag distribution)",
        description="Run the control plane. Every option can also be set by environment "
                    "variable: CP_FLAGS_DIR, CP_HOST, CP_PORT, DATABASE_URL, CP_SYNC_PORT.")
    serve.add_argument("--flags", dest="flags_dir", type=Path,
                       help="flag directory (default: the shipped flags/)")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8080)")
    serve.add_argument("--database-url", dest="database_url",
                       help="SQLAlchemy URL (default: sqlite:///./control-plane.db)")
    serve.add_argument("--log-level", default=os.environ.get("CP_LOG_LEVEL", "info"),
                       choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument("--access-log", action="store_true",
                       help="log every request (off by default: the hot path is per request)")
    serve.set_defaults(command=_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="control-plane",
        description="Feature-flag control plane for model microservices.")
    commands = parser.add_subparsers(dest="subcommand", required=True)
    _add_serve(commands)
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
