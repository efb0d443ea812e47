"""`control-plane init [DIR]`: write the shipped example flag files where ops will edit them.

The examples live inside the installed `flags` package; the service reads and writes the flag
directory it is given (`./flags` by default), never the package itself, so a reinstall cannot
wipe ops' edits. Existing files are left alone unless `--force`.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

__all__ = ["add_init", "shipped_flag_files", "write_examples"]

_SUFFIXES = (".flagd.json", ".flagd.yaml", ".flagd.yml")


def shipped_flag_files() -> dict[str, str]:
    """File name -> text of every example flag file shipped in the `flags` package."""
    package = resources.files("flags")
    return {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in package.iterdir()
        if entry.is_file() and entry.name.endswith(_SUFFIXES)
    }


def write_examples(directory: Path, *, force: bool = False) -> tuple[list[Path], list[Path]]:
    """Write the examples into `directory` (created); (written, kept because they existed)."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    kept: list[Path] = []
    for name, text in sorted(shipped_flag_files().items()):
        target = directory / name
        if target.exists() and not force:
            kept.append(target)
            continue
        temp = directory / f".{name}.init-tmp"
        temp.write_text(text, encoding="utf-8")
        temp.replace(target)  # atomic: a running server never reads half a file
        written.append(target)
    return written, kept


def _init(args: argparse.Namespace) -> int:
    directory: Path = args.directory
    if directory.exists() and not directory.is_dir():
        print(f"control-plane init: {directory} exists and is not a directory", file=sys.stderr)
        return 2
    try:
        written, kept = write_examples(directory, force=args.force)
    except OSError as exc:
        print(f"control-plane init: cannot write to {directory}: {exc.strerror}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    for path in kept:
        print(f"kept {path} (exists; --force overwrites it)")
    print(f"serve them with: control-plane serve --flags {directory}")
    return 0


def add_init(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    init = commands.add_parser(
        "init",
        help="write the shipped example flag files to a flag directory",
        description="Write the example flag files (model routing, vector hook pipelines) to "
        "DIR (default ./flags), the directory `serve` reads by default.",
    )
    init.add_argument("directory", nargs="?", type=Path, default=Path("flags"), metavar="DIR")
    init.add_argument("--force", action="store_true", help="overwrite files that exist")
    init.set_defaults(command=_init)
