"""The `control-plane` console script: a clear message when the server stack is not installed.

The base distribution is the hook SDK (`vector_hooks`, `providers`, `flags`); the control plane's
commands need the `[server]` extra. Without it, importing the CLI fails on its first server
dependency, which would end in a traceback; this entry point names the fix instead.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]

_SERVER_MODULES = frozenset(
    {
        "fastapi",
        "uvicorn",
        "sqlalchemy",
        "alembic",
        "pydantic",
        "pydantic_settings",
        "httpx",
        "prometheus_client",
        "yaml",
        "starlette",
        "opentelemetry",
    }
)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        from control_plane.cli.parser import main as cli_main
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in _SERVER_MODULES:
            raise
        print(
            f"control-plane: the server stack is not installed (no module {exc.name!r}); "
            "install the [server] extra (from a clone: pip install -e '.[server]')",
            file=sys.stderr,
        )
        return 2
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
