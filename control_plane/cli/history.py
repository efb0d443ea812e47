"""`control-plane history`: the stored flag set versions as a table, newest first, with diffs.

Read-only: it never creates or migrates a database. A missing SQLite file, a database that was
never migrated, or one at another schema revision is a one-line message and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from control_plane.cli.common import positive_int, settings_from
from control_plane.db import repository
from control_plane.db.engine import Database
from control_plane.db.migrate import current_revision, head_revision
from control_plane.db.models import FlagSetVersion
from control_plane.flagstore.version_diff import describe_diff

__all__ = ["EXIT_NO_HISTORY", "add_history", "run_history"]

EXIT_NO_HISTORY = 1
#: Diff lines shown per version before "... and N more".
_DIFF_LINES = 8


def _row_json(row: FlagSetVersion) -> dict[str, Any]:
    return {
        "version": row.version,
        "createdAt": row.created_at.isoformat(),
        "source": row.source,
        "actor": row.actor,
        "message": row.message,
        "contentHash": row.content_hash,
        "bucketing": row.bucketing,
        "flagCount": len(row.document.get("flags", {})),
        "diff": row.diff,
    }


def _table(rows: list[FlagSetVersion], *, diffs: bool) -> list[str]:
    header = ("version", "created (UTC)", "source", "actor", "flags", "hash", "message")
    cells = [
        (
            str(row.version),
            row.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            row.source,
            row.actor,
            str(len(row.document.get("flags", {}))),
            row.content_hash[:12],
            row.message,
        )
        for row in rows
    ]
    widths = [max(len(header[i]), *(len(line[i]) for line in cells)) for i in range(6)]

    def render(values: tuple[str, ...]) -> str:
        fixed = [values[0].rjust(widths[0])]
        fixed += [value.ljust(width) for value, width in zip(values[1:6], widths[1:], strict=True)]
        return "  ".join([*fixed, values[6]]).rstrip()

    lines = [render(header)]
    indent = " " * (widths[0] + 2)
    for row, values in zip(rows, cells, strict=True):
        lines.append(render(values))
        if diffs:
            changes = describe_diff(row.diff)
            lines += [indent + change for change in changes[:_DIFF_LINES]]
            if len(changes) > _DIFF_LINES:
                lines.append(f"{indent}... and {len(changes) - _DIFF_LINES} more changes")
    return lines


def run_history(
    database_url: str,
    *,
    limit: int = 20,
    diffs: bool = True,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Print the newest `limit` versions stored at `database_url`; return the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        url = make_url(database_url)
        database = Database.from_url(database_url)
    except (ArgumentError, NoSuchModuleError) as exc:
        print(
            f"control-plane history: the database URL is not usable: {exc} (expected e.g. "
            "sqlite:///control-plane.db or postgresql+psycopg://user@host/db)",
            file=err,
        )
        return EXIT_NO_HISTORY
    shown = url.render_as_string(hide_password=True)
    sqlite_file = url.database if url.get_backend_name() == "sqlite" else None
    if sqlite_file not in (None, "", ":memory:") and not Path(str(sqlite_file)).exists():
        print(
            f"control-plane history: no database file {sqlite_file} (nothing recorded "
            "yet; `control-plane serve` creates it)",
            file=err,
        )
        database.dispose()
        return EXIT_NO_HISTORY
    try:
        revision = current_revision(database.engine)
        head = head_revision()
        if revision is None:
            print(
                f"control-plane history: {shown} holds no control plane tables "
                "(`control-plane serve` creates them)",
                file=err,
            )
            return EXIT_NO_HISTORY
        if revision != head:
            print(
                f"control-plane history: {shown} is at schema revision {revision}, this "
                f"version expects {head}; run `control-plane serve` once to upgrade it",
                file=err,
            )
            return EXIT_NO_HISTORY
        with database.session() as session:
            rows = repository.list_versions(session=session, limit=limit)
            total = repository.count_versions(session=session)
            if as_json:
                print(
                    json.dumps({"total": total, "items": [_row_json(r) for r in rows]}, indent=2),
                    file=out,
                )
                return 0
            if not rows:
                print(f"no flag set versions recorded in {shown}", file=out)
                return 0
            for line in _table(rows, diffs=diffs):
                print(line, file=out)
            if total > len(rows):
                print(f"({len(rows)} of {total} versions; --limit {total} shows all)", file=out)
        return 0
    except SQLAlchemyError as exc:
        original = getattr(exc, "orig", None)  # the driver's own message, when there is one
        reason = str(original) if original is not None else str(exc)
        print(
            f"control-plane history: cannot read {shown}: {reason.strip().splitlines()[0]}",
            file=err,
        )
        return EXIT_NO_HISTORY
    finally:
        database.dispose()


def _history(args: argparse.Namespace) -> int:
    return run_history(
        settings_from(args).database_url,
        limit=args.limit,
        diffs=not args.no_diff,
        as_json=args.json,
    )


def add_history(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    history = commands.add_parser(
        "history",
        help="list stored flag set versions with who changed what",
        description="Print the flag set versions stored in the database, newest first: version, "
        "time, source (file/api/rollback), actor, flag count, content hash, "
        "message, and the changed JSON paths. Exit status 1 when there is no "
        "history to read.",
    )
    history.add_argument(
        "--limit", type=positive_int, default=20, help="how many versions to show (default 20)"
    )
    history.add_argument(
        "--database-url",
        dest="database_url",
        help="SQLAlchemy URL (default: DATABASE_URL or sqlite:///./control-plane.db)",
    )
    history.add_argument("--no-diff", action="store_true", help="leave out the changed paths")
    history.add_argument("--json", action="store_true", help="print JSON instead of a table")
    history.set_defaults(command=_history)
