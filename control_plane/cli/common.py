"""What the commands share: settings from options, argument types, the command signature."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from control_plane.settings import Settings

__all__ = ["LOG_LEVELS", "Command", "positive_int", "settings_from"]

Command = Callable[[argparse.Namespace], int]
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from explicit options over environment over defaults."""
    explicit = {
        name: getattr(args, name)
        for name in (
            "flags_dir",
            "host",
            "port",
            "database_url",
            "sync_port",
            "log_format",
            # the sync port's own address and TLS files (trust boundary settings)
            "sync_host",
            "sync_tls_cert_file",
            "sync_tls_key_file",
            # replica mode: follow a control plane instead of reading ./flags
            "replica_of",
        )
        if getattr(args, name, None) is not None
    }
    return Settings(**explicit)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value
